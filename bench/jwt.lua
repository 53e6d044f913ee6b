-- Scenario "jwt": GET /api/orders/123 with an HS256 bearer token, from 64 clients (tokens
-- given by bench/run.py in FASTGW_BENCH_JWT, comma-separated; one per client, in turn).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
done = dofile(here .. "common.lua")
local requests = {}

function init(args)
  -- Precomputed so the load side spends no time on string building per request.
  for token in string.gmatch(os.getenv("FASTGW_BENCH_JWT") or "", "[^,]+") do
    requests[#requests + 1] = wrk.format("GET", "/api/orders/123", {["Authorization"] = "Bearer " .. token})
  end
  if #requests == 0 then
    error("FASTGW_BENCH_JWT holds no token")
  end
end

local n = 0
function request()
  n = n + 1
  if n > #requests then n = 1 end
  return requests[n]
end
