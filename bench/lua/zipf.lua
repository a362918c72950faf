-- zipf.lua: GET /obj?id=z<k>, k drawn from a Zipf(s) distribution over 1..KEYS
-- (P(k) proportional to 1/k^s: key 1 is the most popular).
-- Usage: wrk ... -s zipf.lua http://127.0.0.1:PORT/ -- KEYS S SEED
-- The same key space is used in every run, so the caches reach a steady state; the harness sizes the
-- caches smaller than KEYS objects, so the hit ratio depends on what each cache keeps.
local threads = 0
function setup(thread)
   threads = threads + 1
   thread:set("tid", threads)
end

local cdf, keys = {}, 0
function init(args)
   keys = tonumber(args[1] or "100000")
   local s = tonumber(args[2] or "0.99")
   local seed = tonumber(args[3] or "1")
   local total = 0
   for k = 1, keys do
      total = total + 1 / k ^ s
      cdf[k] = total
   end
   for k = 1, keys do
      cdf[k] = cdf[k] / total
   end
   math.randomseed(seed * 7919 + (tid or 0))
end

local random, format = math.random, wrk.format
function request()
   -- smallest k with cdf[k] >= u (binary search)
   local u, lo, hi = random(), 1, keys
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
   end
   return format("GET", "/obj?id=z" .. lo)
end

dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/report.lua")
