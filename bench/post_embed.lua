-- wrk script: POST one sentence to /embed as JSON.
wrk.method = "POST"
wrk.body = '{"texts":["A man is eating a piece of bread in the park."]}'
wrk.headers["Content-Type"] = "application/json"
