/* A process tree that outruns a single kill pass: WIDTH chains, each in a session of its own,
 * each forking HOPS times with the parent exiting at once, so every hop is orphaned and handed
 * to the supervisor (the subreaper) while it looks for leftovers; the last hop sleeps. The main
 * process exits after 20 ms. Built by test_exec_run.py with the system's C compiler. */
#include <unistd.h>
#include <stdlib.h>
#include <fcntl.h>
#include <time.h>
int main(int c, char **v) {
  int width = atoi(v[1]); long hops = atol(v[2]);
  int fd = open("/dev/null", O_RDWR); dup2(fd,0); dup2(fd,1); dup2(fd,2);
  for (int w = 0; w < width; w++) if (fork() == 0) {
      setsid();
      for (long i = 0; i < hops; i++) { pid_t p = fork(); if (p > 0) _exit(0); if (p < 0) { usleep(1000); i--; } }
      execl("/bin/sleep", "sleep", "777.77", (char*)0); _exit(1);
  }
  usleep(20000);
  _exit(0);
}
