-- Scenario "gateway": GET /api/orders/123 with an API key (key-auth, request id,
-- response header, access log on in every proxy).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
done = dofile(here .. "common.lua")
wrk.method = "GET"
wrk.path = "/api/orders/123"
wrk.headers["apikey"] = "bench-key-1"
