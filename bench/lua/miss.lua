-- miss.lua: every request asks for a key nobody asked for before:
--   GET /obj?id=<salt>-<thread>-<counter>
-- Usage: wrk ... -s miss.lua http://127.0.0.1:PORT/ -- SALT
-- The salt (fresh per run, chosen by the harness) keeps runs from hitting each other's keys.
local threads = 0
function setup(thread)
   threads = threads + 1
   thread:set("tid", threads)
end

local prefix, n = "/obj?id=", 0
function init(args)
   prefix = "/obj?id=" .. (args[1] or tostring(os.time())) .. "-" .. tostring(tid or 0) .. "-"
end

local format = wrk.format
function request()
   n = n + 1
   return format("GET", prefix .. n)
end

dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/report.lua")
