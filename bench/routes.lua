-- Scenario "routes": 1 000 routes /r{i}/items/{id} in every proxy; each request hits a random one.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
done = dofile(here .. "common.lua")
local NROUTES = 1000
local paths = {}

function init(args)
  math.randomseed(12345 + (wrk.thread and 0 or 0))
  -- Precomputed so the load side spends no time on string building per request.
  for i = 1, 4096 do
    paths[i] = wrk.format("GET", string.format("/r%d/items/%d", math.random(0, NROUTES - 1), math.random(1, 99999)))
  end
end

local n = 0
function request()
  n = n + 1
  if n > 4096 then n = 1 end
  return paths[n]
end
