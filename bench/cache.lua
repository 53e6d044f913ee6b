-- Scenario "cache": GET /api/orders/123 over keep-alive connections, every answer from the
-- proxy's cache (the check stored it): fastgw's proxy-cache beside nginx's proxy_cache and
-- HAProxy's cache. The upstream is asked once.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
done = dofile(here .. "common.lua")
wrk.method = "GET"
wrk.path = "/api/orders/123"
