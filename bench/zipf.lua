-- wrk script: GET /api/v1/photos/{id} with ids drawn from a Zipf distribution.
-- wrk -s bench/zipf.lua URL -- IDS_FILE ALPHA SEED [PREFIX SUFFIX]
-- IDS_FILE holds one id per line, most popular first; PREFIX and SUFFIX make the path
-- around the id (default /api/v1/photos/ and nothing: /media/ and /v1/thumb.jpg for
-- media).

local ids = {}
local cdf = {}
local prefix = "/api/v1/photos/"
local suffix = ""

function init(args)
  for line in io.lines(args[1]) do
    ids[#ids + 1] = line
  end
  local alpha = tonumber(args[2]) or 1.0
  local total = 0.0
  for k = 1, #ids do
    total = total + 1.0 / (k ^ alpha)
  end
  local acc = 0.0
  for k = 1, #ids do
    acc = acc + (1.0 / (k ^ alpha)) / total
    cdf[k] = acc
  end
  math.randomseed(tonumber(args[3]) or 42)
  prefix = args[4] or prefix
  suffix = args[5] or suffix
end

function request()
  local r = math.random()
  local lo, hi = 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < r then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return wrk.format("GET", prefix .. ids[lo] .. suffix)
end
