-- fill.lua: every request asks for an object nobody asked for before, of a chosen body size:
--   GET /e/<size>/<salt>-<thread>-<counter>
-- Usage: wrk ... -s fill.lua http://127.0.0.1:PORT/ -- SALT PER_THREAD SIZE[,SIZE...]
-- With one size every object has it; with several, object n gets SIZES[(hash of n) mod #SIZES] (a fixed
-- mix, the same on every system). Each thread stops after PER_THREAD responses, so a run sends exactly
-- threads x PER_THREAD distinct requests (bench/efficiency.py sets a duration bound as well).
local threads = 0
function setup(thread)
   threads = threads + 1
   thread:set("tid", threads)
end

local salt, limit, sizes, n, got = "x", 1000, {"1024"}, 0, 0
function init(args)
   salt = (args[1] or tostring(os.time())) .. "-" .. tostring(tid or 0) .. "-"
   limit = tonumber(args[2] or "1000")
   sizes = {}
   for s in string.gmatch(args[3] or "1024", "[^,]+") do sizes[#sizes + 1] = s end
end

local format = wrk.format
function request()
   n = n + 1
   local k = 1
   if #sizes > 1 then k = ((n * 2654435761) % 4294967296) % #sizes + 1 end
   return format("GET", "/e/" .. sizes[k] .. "/" .. salt .. n)
end

function response(status, headers, body)
   got = got + 1
   if got >= limit then wrk.thread:stop() end
end

dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/report.lua")
