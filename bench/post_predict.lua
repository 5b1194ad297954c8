-- wrk script: POST one Iris row to /predict as JSON.
wrk.method = "POST"
wrk.body = '{"inputs":[[5.1,3.5,1.4,0.2]]}'
wrk.headers["Content-Type"] = "application/json"
