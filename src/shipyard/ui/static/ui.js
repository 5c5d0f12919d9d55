/* shipyard ui: the little the pages need beyond HTML — the deployment page's class maps load after
   it (they read bundles), and the compare button says how many runs to tick. Charts: charts.js. */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var maps = document.getElementById("maps");
    if (maps && maps.getAttribute("data-src")) {
      fetch(maps.getAttribute("data-src"), {credentials: "same-origin"}).then(function (r) {
        return r.ok ? r.text() : Promise.reject(new Error(r.status + " " + r.statusText));
      }).then(function (html) { maps.innerHTML = html; })
        .catch(function (e) { maps.textContent = "class maps unavailable: " + e.message; });
    }
    var form = document.getElementById("compare-form");
    if (form) {
      form.addEventListener("submit", function (ev) {
        var n = form.querySelectorAll("input[name=ids]:checked").length;
        if (n < 2 || n > 5) {
          ev.preventDefault();
          var msg = document.getElementById("compare-msg") || document.createElement("p");
          msg.id = "compare-msg"; msg.className = "error"; msg.setAttribute("role", "alert");
          msg.textContent = "tick 2 to 5 runs to compare (" + n + " ticked)";
          form.appendChild(msg);
        }
      });
    }
  });
})();
