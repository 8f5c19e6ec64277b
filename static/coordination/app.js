// Keeps relative times and lease countdowns current, shows whether live updates are connected,
// and after every (re)connect tells the server the last event this page shows, so it can replay
// whatever was published meanwhile.
(function () {
  "use strict";
  function age(ms) {
    var s = Math.round((Date.now() - ms) / 1000);
    var future = s < 0;
    s = Math.abs(s);
    var label;
    if (s < 5) return future ? "in a moment" : "just now";
    if (s >= 86400) label = Math.floor(s / 86400) + "d";
    else if (s >= 3600) label = Math.floor(s / 3600) + "h";
    else if (s >= 60) label = Math.floor(s / 60) + "m";
    else label = s + "s";
    return future ? "in " + label : label + " ago";
  }
  function refreshTimes(root) {
    root = root && root.querySelectorAll ? root : document;
    root.querySelectorAll("time[data-ts]").forEach(function (el) {
      el.textContent = age(parseInt(el.getAttribute("data-ts"), 10));
    });
    root.querySelectorAll("[data-expires]").forEach(function (el) {
      var left = Math.round((parseInt(el.getAttribute("data-expires"), 10) - Date.now()) / 1000);
      el.textContent = left > 0 ? "lease ends in " + left + "s" : "lease expired";
    });
  }
  function setLive(state, label) {
    document.querySelectorAll("[data-live-indicator]").forEach(function (el) {
      el.setAttribute("data-state", state);
      var text = el.querySelector(".live-label");
      if (text) text.textContent = label;
    });
  }
  function lastEventId() {
    var row = document.querySelector("#timeline [data-event-id]");
    return row ? row.getAttribute("data-event-id") : "0";
  }
  document.addEventListener("DOMContentLoaded", function () {
    refreshTimes(document);
    setInterval(function () { refreshTimes(document); }, 1000);
  });
  document.addEventListener("htmx:wsOpen", function (e) {
    setLive("connected", "Live");
    e.detail.socketWrapper.send(JSON.stringify({ resume: lastEventId() }), e.target);
  });
  document.addEventListener("htmx:wsClose", function () { setLive("disconnected", "Disconnected, reconnecting…"); });
  document.addEventListener("htmx:wsError", function () { setLive("disconnected", "Disconnected, reconnecting…"); });
  document.addEventListener("htmx:wsAfterMessage", function () { refreshTimes(document); });
  document.addEventListener("htmx:afterSwap", function (e) { refreshTimes(e.target); });
  document.addEventListener("htmx:afterRequest", function (e) {
    var form = e.detail.elt;
    if (e.detail.successful && form.hasAttribute && form.hasAttribute("data-reset-on-success")) form.reset();
  });
  window.coordinator = { refreshTimes: refreshTimes, setLive: setLive, lastEventId: lastEventId };
})();
