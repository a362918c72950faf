-- report.lua: prints one machine-readable line when wrk is done (parsed by bench/wrkrun.py).
-- Used alone for the static hit loads: with no request()/response() hooks wrk keeps its fast
-- prebuilt-request path. The other scripts load it with dofile() for the same done().
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
      '"mean_us":%.1f,"max_us":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.max, latency:percentile(50), latency:percentile(99),
      latency:percentile(99.9)))
end
