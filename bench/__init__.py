"""The load benchmark; run it with bench/run.sh (see bench/README.md)."""
