-- Scenario "post": POST /api/orders with a 4 KB JSON body over keep-alive connections.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
done = dofile(here .. "common.lua")
wrk.method = "POST"
wrk.path = "/api/orders"
wrk.headers["Content-Type"] = "application/json"
-- 4096 bytes exactly: {"data":"xxx...x"} (the runner's check sends the same body)
wrk.body = '{"data":"' .. string.rep("x", 4096 - 11) .. '"}'
