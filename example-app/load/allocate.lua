-- wrk script: POST /allocate with a fresh order line each time, spread over
-- the 100 products that run.sh seeds; prints the count of each status.
local threads = {}

function setup(thread)
  thread:set("tag", math.random(1, 1000000000))
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  statuses = {}
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"orderid":"order-%d-%d","sku":"LOAD-SKU-%d","qty":1}', tag, counter, counter % 100)
  return wrk.format("POST", "/allocate", { ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
  end
  for status, count in pairs(totals) do
    io.write(string.format("status %d: %d\n", status, count))
  end
end
