-- Scenario "plain": GET /api/orders/123 over keep-alive connections (30-byte JSON answer).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
done = dofile(here .. "common.lua")
wrk.method = "GET"
wrk.path = "/api/orders/123"
