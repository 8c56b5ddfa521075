// k6 version of the keep-alive scenario, for users who have k6:
//   k6 run -e TARGET=http://127.0.0.1:18081/index.html loadtest/k6/keepalive.js  (fixed-port-ok)
// 64 virtual users, each reusing its connection, for 30 s; fails the run if
// any request fails or p99 latency exceeds 50 ms.
import http from "k6/http";
import { check } from "k6";

// lbd's port in loadtest/run.py
const target = __ENV.TARGET || "http://127.0.0.1:18081/index.html"; // fixed-port-ok

export const options = {
  vus: 64,
  duration: __ENV.DURATION || "30s",
  thresholds: {
    http_req_failed: ["rate==0"],
    http_req_duration: ["p(99)<50"],
  },
  summaryTrendStats: ["med", "p(99)", "p(99.9)", "max"],
};

export default function () {
  const response = http.get(target);
  check(response, { "status is 200": (r) => r.status === 200 });
}
