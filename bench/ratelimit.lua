-- Scenario "ratelimit": GET /api/orders/123 counted against a per-client-address limit
-- (never reached during the run), over keep-alive connections.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
done = dofile(here .. "common.lua")
wrk.method = "GET"
wrk.path = "/api/orders/123"
