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
  // Bulk selection on the sessions list. Live updates replace rows (and their checkboxes), so
  // the ticked session ids are kept here and put back after every swap.
  var selected = new Set();
  function syncSelection() {
    var boxes = document.querySelectorAll("[data-bulk-select]");
    var shown = 0, ticked = 0;
    boxes.forEach(function (box) {
      box.checked = selected.has(box.value);
      shown += 1;
      if (box.checked) ticked += 1;
    });
    var all = document.querySelector("[data-bulk-all]");
    if (all) {
      all.checked = shown > 0 && ticked === shown;
      all.indeterminate = ticked > 0 && ticked < shown;
    }
    var count = document.getElementById("bulk-count");
    if (count) count.textContent = selected.size ? selected.size + " selected" : "None selected";
  }
  document.addEventListener("change", function (e) {
    var el = e.target;
    if (el.matches("[data-bulk-select]")) {
      if (el.checked) selected.add(el.value); else selected.delete(el.value);
    } else if (el.matches("[data-bulk-all]")) {
      document.querySelectorAll("[data-bulk-select]").forEach(function (box) {
        if (el.checked) selected.add(box.value); else selected.delete(box.value);
      });
    } else {
      return;
    }
    syncSelection();
  });
  document.addEventListener("htmx:afterRequest", function (e) {
    if (e.detail.successful && e.detail.elt.hasAttribute && e.detail.elt.hasAttribute("data-bulk-form")) {
      selected.clear();
      syncSelection();
    }
  });
  document.addEventListener("htmx:wsAfterMessage", syncSelection);
  document.addEventListener("htmx:afterSettle", syncSelection);
  document.addEventListener("DOMContentLoaded", function () {
    // a page restored from the back/forward cache may show boxes ticked
    document.querySelectorAll("[data-bulk-select]:checked").forEach(function (box) { selected.add(box.value); });
    syncSelection();
  });

  window.coordinator = { refreshTimes: refreshTimes, setLive: setLive, lastEventId: lastEventId };
})();
