-- Scenario "close": GET /api/orders/123 with "Connection: close" (a new client connection per request).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
done = dofile(here .. "common.lua")
wrk.method = "GET"
wrk.path = "/api/orders/123"
wrk.headers["Connection"] = "close"
