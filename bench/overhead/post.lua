-- wrk script: POST the bench body with an auth header; print a JSON summary on stderr.
--   BENCH_BODY='{"model":...}' BENCH_KEY=... wrk -s bench/overhead/post.lua http://host:port/v1/chat/completions
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"echo","messages":[{"role":"user","content":"hello"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "none")

function done(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
