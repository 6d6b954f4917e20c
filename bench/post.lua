-- wrk script: POST pre-minted request bodies to /execute, one line of the bodies file each.
--
--   wrk -t T -c C -d D -s bench/post.lua URL -- BODIES_FILE T MODE
--
-- Thread i of T sends lines i, i+T, i+2T, ... so no two threads share a nonce.
-- MODE "once":   each body is sent at most once; a thread that runs out asks for
--                /bench-bodies-exhausted instead (a 404), so the run fails loudly.
-- MODE "cycle":  wrap around (for stateless servers such as the ceiling app).
-- MODE "replay": wrap around, and every 200 answer must say "replayed":true.
-- done() prints one line "BENCH {json}" for bench/wrk.py, and "BENCH_FAILURE ..." with the
-- first non-200 answer of each thread that had one.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local bodies, count, index, mode = {}, 0, 0, "once"
local headers = { ["Content-Type"] = "application/json" }
non200, not_replayed, exhausted, first_failure = 0, 0, 0, nil

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  mode = args[3]
  local line_number = 0
  for line in io.lines(path) do
    if line_number % nthreads == id then
      count = count + 1
      bodies[count] = line
    end
    line_number = line_number + 1
  end
  if count == 0 then
    error("no request bodies for thread " .. id .. " in " .. path)
  end
end

function request()
  index = index + 1
  if index > count then
    if mode == "once" then
      exhausted = exhausted + 1
      return wrk.format("GET", "/bench-bodies-exhausted")
    end
    index = 1
  end
  return wrk.format("POST", "/execute", headers, bodies[index])
end

function response(status, _, body)
  if status ~= 200 then
    non200 = non200 + 1
    if first_failure == nil then
      first_failure = status .. " " .. string.sub(body or "", 1, 300):gsub("\n", " ")
    end
  elseif mode == "replay" and not string.find(body, '"replayed":true', 1, true) then
    not_replayed = not_replayed + 1
  end
end

function done(summary, latency, _)
  local totals = { non200 = 0, not_replayed = 0, exhausted = 0 }
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + thread:get(name)
    end
    local failure = thread:get("first_failure")
    if failure ~= nil then
      io.write("BENCH_FAILURE ", failure, "\n")
    end
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"non200":%d,"not_replayed":%d,"exhausted":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.max,
    totals.non200, totals.not_replayed, totals.exhausted,
    errors.connect, errors.read, errors.write, errors.timeout))
end
