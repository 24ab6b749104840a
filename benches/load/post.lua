-- wrk script: POST one of several JSON bodies with a bearer token.
-- Environment: AGREGAT_TOKEN, AGREGAT_BODIES (file with one JSON body per
-- line), AGREGAT_PATH (request path).
local token = os.getenv("AGREGAT_TOKEN")
local path = os.getenv("AGREGAT_PATH") or "/v1/query"
local bodies = {}
for line in io.lines(os.getenv("AGREGAT_BODIES")) do
  if line ~= "" then bodies[#bodies + 1] = line end
end
local n = 0

request = function()
  n = n + 1
  local body = bodies[(n % #bodies) + 1]
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, body)
end

local errors = 0
response = function(status, headers, body)
  if status ~= 200 then
    errors = errors + 1
    if errors <= 3 then io.stderr:write("non-200: " .. status .. " " .. body .. "\n") end
  end
end

done = function(summary, latency, requests)
  io.write(string.format(
    "RESULT requests=%d duration_s=%.1f rps=%.1f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000,
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
