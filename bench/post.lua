-- wrk script for bench/run.py: POST a fixed body with bearer auth, optionally
-- paced to BENCH_RATE requests per second (per wrk thread; run with -t1), and
-- print the result as one JSON line prefixed with BENCH_JSON.
--
-- Pacing keeps a schedule (LuaJIT ffi reads CLOCK_MONOTONIC): a request is held
-- until its slot, and sent at once when the schedule is behind. Latency is wrk's
-- own (from send to response), so a stall shows in the rate, not the latency.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")

local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local step = rate > 0 and 1000 / rate or 0
local next_at = nil

function delay()
  if step == 0 then return 0 end
  local now = now_ms()
  if next_at == nil then next_at = now end
  next_at = next_at + step
  local wait = next_at - now
  if wait < 0 then
    -- behind schedule: do not bank more than one second of catch-up
    if wait < -1000 then next_at = now end
    return 0
  end
  return math.floor(wait)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "errors": %d, "status_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
