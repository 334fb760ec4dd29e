-- wrk script for workload A (SSE): POST a streaming chat request; report JSON at the end.
-- Usage: wrk -t1 -cC -dDs --timeout 30s -s benchmarks/wrk/post.lua URL -- TOKENS
-- Each wrk "request" is a whole stream of TOKENS chunk events; wrk's latency is the
-- stream's completion time.  The runner turns bytes read into tokens with the size of one
-- response measured by the validator (so streams cut off at the end still count).

local tokens = 1000
local prompt = "Write a short story about a token stream that flows through a bounded pipe "
  .. "to every reader please"

function init(args)
  if args[1] then tokens = tonumber(args[1]) end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "text/event-stream"
  wrk.body = '{"model":"synthetic","messages":[{"role":"user","content":"' .. prompt
    .. '"}],"stream":true,"max_tokens":' .. tokens .. '}'
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"bytes":%d,"duration_us":%d,'
    .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
    .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%f}}\n',
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
