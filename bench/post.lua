-- wrk script for bench/load.sh: POST /v4/sip with the reference body.
--
--   wrk ... -s bench/post.lua URL -- BODY_FILE API_KEY MODE RUN_ID
--
-- MODE "unique" (the default) gives every request its own job_details.job_id
-- ("<job_id>-<run>-<thread>-<counter>"), so each one is decided and stored: the gateway is
-- idempotent by job_id and the same body again is only a replay. MODE "replay" sends the body
-- unchanged, which measures that replay path. MODE "get" sends `GET /` (the hello-world
-- baseline's classic request). done() prints the percentiles as one line that
-- load.sh parses.

local threads = {}
local next_id = 1

function setup(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local before, after, key, mode
counter = 0 -- global, so done() can read it per thread
fixed = nil
local tid = 0

function init(args)
   local path = args[1] or "tests/bench/s01-reference.json"
   key = args[2] or ""
   mode = args[3] or "unique"
   local run = args[4] or tostring(os.time())
   tid = tonumber(wrk.thread:get("tid")) or 0
   local f = assert(io.open(path, "rb"))
   local body = f:read("*a")
   f:close()
   -- Split the body around the job_id's value once; request() only concatenates.
   local s, e, value = body:find('"job_id"%s*:%s*"([^"]*)"')
   assert(s, "no job_id in " .. path)
   local vstart = body:find('"', body:find(':', s, true), true) + 1
   before = body:sub(1, vstart - 1) .. value .. "-" .. run .. "-" .. tid .. "-"
   after = body:sub(vstart + #value)
   if mode == "replay" then
      fixed = wrk.format("POST", "/v4/sip", headers(), body)
   elseif mode == "get" then
      fixed = wrk.format("GET", "/")
   end
end

function headers()
   return { ["Content-Type"] = "application/json", ["X-API-Key"] = key }
end

-- No response() callback: it would make wrk hand every response to Lua. Non-2xx answers are
-- counted by wrk itself (errors.status); load.sh cross-checks accepts with /metrics.
function request()
   if fixed then
      return fixed
   end
   counter = counter + 1
   return wrk.format("POST", "/v4/sip", headers(), before .. counter .. after)
end

function done(summary, latency, requests)
   -- Latencies are in microseconds.
   io.write(string.format("PERCENTILES p50_us=%d p99_us=%d p999_us=%d max_us=%d requests=%d errors_status=%d errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d duration_us=%d\n",
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
      summary.requests, summary.errors.status, summary.errors.connect, summary.errors.read,
      summary.errors.write, summary.errors.timeout, summary.duration))
   for _, t in ipairs(threads) do
      io.write(string.format("THREAD tid=%s last_counter=%s\n", t:get("tid"), t:get("counter") or 0))
   end
end
