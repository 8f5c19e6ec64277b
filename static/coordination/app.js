// Keeps relative times current and shows whether live updates are connected.
(function () {
  "use strict";
  function age(ms) {
    var s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
    if (s < 5) return "just now";
    if (s >= 86400) return Math.floor(s / 86400) + "d ago";
    if (s >= 3600) return Math.floor(s / 3600) + "h ago";
    if (s >= 60) return Math.floor(s / 60) + "m ago";
    return s + "s ago";
  }
  function refreshTimes(root) {
    (root || document).querySelectorAll("time[data-ts]").forEach(function (el) {
      el.textContent = age(parseInt(el.getAttribute("data-ts"), 10));
    });
  }
  function setLive(state, label) {
    document.querySelectorAll("[data-live-indicator]").forEach(function (el) {
      el.setAttribute("data-state", state);
      var text = el.querySelector(".live-label");
      if (text) text.textContent = label;
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    refreshTimes();
    setInterval(refreshTimes, 5000);
  });
  document.addEventListener("htmx:wsOpen", function () { setLive("connected", "Live"); });
  document.addEventListener("htmx:wsClose", function () { setLive("disconnected", "Disconnected, reconnecting…"); });
  document.addEventListener("htmx:wsError", function () { setLive("disconnected", "Disconnected, reconnecting…"); });
  document.addEventListener("htmx:afterSwap", function (e) { refreshTimes(e.target); });
  document.addEventListener("htmx:oobAfterSwap", function (e) { refreshTimes(e.target); });
  window.coordinator = { refreshTimes: refreshTimes, setLive: setLive };
})();
