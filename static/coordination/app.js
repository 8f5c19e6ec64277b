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
    root.querySelectorAll("[data-sla-clock]").forEach(function (el) {
      // the same wording as supervision/escalations.sla_clock_text: "4m left", "2m over"
      var left = Math.trunc((parseInt(el.getAttribute("data-sla-clock"), 10) - Date.now()) / 1000);
      var span = Math.abs(left), label = span + "s";
      if (span >= 86400) label = Math.floor(span / 86400) + "d";
      else if (span >= 3600) label = Math.floor(span / 3600) + "h";
      else if (span >= 60) label = Math.floor(span / 60) + "m";
      el.textContent = label + (left >= 0 ? " left" : " over");
    });
    root.querySelectorAll("[data-sla-deadline]").forEach(function (el) {
      var over = Date.now() > parseInt(el.getAttribute("data-sla-deadline"), 10);
      el.hidden = !over;
      var row = el.closest("tr");
      if (row) row.classList.toggle("over-sla", over);
      // a session waiting for pickup past its SLA becomes an alert (see ALERT_KINDS)
      if (over && row && row.hasAttribute("data-pickup")) {
        row.setAttribute("data-pickup-overdue", row.getAttribute("data-pickup"));
      }
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
  // Polling fallback. Some proxies and load balancers do not pass websockets: when none stays
  // open for FALLBACK_MS, the page fetches itself every POLL_MS and swaps in its live regions
  // (elements marked data-poll), while the websocket keeps retrying in the background; once a
  // socket has stayed open for HEALTHY_MS, polling stops.
  var FALLBACK_MS = 4000, HEALTHY_MS = 2000, POLL_MS = 5000;
  var polling = null, fallbackTimer = null, healthyTimer = null, socketOpen = false;
  function armFallback() {
    if (polling || fallbackTimer) return;
    fallbackTimer = setTimeout(function () {
      fallbackTimer = null;
      if (!socketOpen) startPolling();
    }, FALLBACK_MS);
  }
  function startPolling() {
    if (polling) return;
    setLive("polling", "Live updates unavailable: refreshing every " + POLL_MS / 1000 + " s");
    polling = setInterval(pollOnce, POLL_MS);
    pollOnce();
  }
  function stopPolling() {
    clearTimeout(fallbackTimer);
    fallbackTimer = null;
    if (polling) clearInterval(polling);
    polling = null;
  }
  function pollOnce() {
    fetch(location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.redirected && response.url.indexOf("/login/") !== -1) {
          location.reload(); // the login expired: the login page says so
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        if (html === null || !polling) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-poll][id]").forEach(function (region) {
          var update = fresh.getElementById(region.id);
          if (!update) return;
          if (region.getAttribute("data-poll") === "merge") {
            mergeNewest(region, update);
          } else if (!region.contains(document.activeElement)) {
            // a region the supervisor is typing in is left alone until the next poll
            region.innerHTML = update.innerHTML;
          }
          if (window.htmx) htmx.process(region);
        });
        refreshTimes(document);
        syncSelection();
        document.dispatchEvent(new CustomEvent("coordinator:polled"));
        setLive("polling", "Live updates unavailable: refreshing every " + POLL_MS / 1000 + " s");
      })
      .catch(function (error) {
        var why = String(error && error.message || "").indexOf("HTTP ") === 0 ? "Refresh failed (" + error.message + ")" : "Server unreachable";
        setLive("disconnected", why + ", retrying every " + POLL_MS / 1000 + " s…");
      });
  }
  function mergeNewest(list, update) {
    // the timeline keeps the older pages it loaded: only events it lacks are added on top
    var first = list.querySelector("[data-event-id]");
    var added = [];
    update.querySelectorAll("[data-event-id]").forEach(function (item) {
      if (!document.getElementById(item.id)) added.push(document.importNode(item, true));
    });
    added.reverse().forEach(function (item) {
      list.insertBefore(item, list.firstChild);
    });
    if (added.length || first) {
      var empty = document.getElementById("timeline-empty");
      if (empty) empty.remove();
    }
  }
  document.addEventListener("htmx:wsOpen", function (e) {
    socketOpen = true;
    if (!polling) setLive("connected", "Live");
    e.detail.socketWrapper.send(JSON.stringify({ resume: lastEventId() }), e.target);
    clearTimeout(healthyTimer);
    healthyTimer = setTimeout(function () {
      stopPolling();
      setLive("connected", "Live");
    }, HEALTHY_MS);
  });
  function socketDown() {
    socketOpen = false;
    clearTimeout(healthyTimer);
    if (!polling) setLive("disconnected", "Disconnected, reconnecting…");
    armFallback();
  }
  document.addEventListener("htmx:wsClose", socketDown);
  document.addEventListener("htmx:wsError", socketDown);
  document.addEventListener("DOMContentLoaded", function () {
    if (document.querySelector("[data-live-root][ws-connect]")) armFallback();
  });
  // A poll answer and the websocket's replay may both bring an event (around a reconnect):
  // the timeline keeps the first copy of each.
  function dropDuplicateEvents() {
    var seen = new Set();
    document.querySelectorAll("#timeline [data-event-id]").forEach(function (item) {
      var id = item.getAttribute("data-event-id");
      if (seen.has(id)) item.remove(); else seen.add(id);
    });
  }
  document.addEventListener("htmx:wsAfterMessage", function () {
    dropDuplicateEvents();
    refreshTimes(document);
  });
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

  // Escalation alerts (opt-in, remembered per browser): a notification and a short tone when a
  // session is escalated. Elements marked data-escalation="<session> <when>" are escalations;
  // those on the page when it loads are known, any new one after a live update or poll alerts.
  var ALERTS_KEY = "coordinator.escalationAlerts";
  var knownEscalations = new Set(), alertLog = [], audio = null;
  function alertsOn() {
    try { return localStorage.getItem(ALERTS_KEY) === "on"; } catch (e) { return false; }
  }
  function showAlertsState() {
    document.querySelectorAll("[data-alerts-toggle]").forEach(function (button) {
      var on = alertsOn();
      button.hidden = false;
      button.setAttribute("aria-pressed", on ? "true" : "false");
      var blocked = on && window.Notification && Notification.permission === "denied";
      button.textContent = "Escalation alerts: " + (on ? (blocked ? "sound only (notifications blocked)" : "on") : "off");
    });
  }
  function beep() {
    if (!audio) return;
    var osc = audio.createOscillator(), gain = audio.createGain();
    osc.frequency.value = 880;
    gain.gain.setValueAtTime(0.15, audio.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.4);
    osc.connect(gain).connect(audio.destination);
    osc.start();
    osc.stop(audio.currentTime + 0.4);
  }
  // Approval requests alert the same way: elements marked data-approval="<session> <approval id>".
  // Sessions waiting for pickup past their SLA too: data-pickup-overdue="<session> <deadline>".
  var ALERT_KINDS = [
    ["data-escalation", "Session escalated"],
    ["data-approval", "Approval requested"],
    ["data-pickup-overdue", "Waiting for pickup over SLA"]
  ];
  function scanEscalations(alert) {
    ALERT_KINDS.forEach(function (kind) {
      document.querySelectorAll("[" + kind[0] + "]").forEach(function (el) {
        var key = kind[0] + " " + el.getAttribute(kind[0]);
        if (knownEscalations.has(key)) return;
        knownEscalations.add(key);
        if (!alert || !alertsOn()) return;
        var value = el.getAttribute(kind[0]);
        var session = value.slice(0, value.lastIndexOf(" "));
        alertLog.push(kind[0] === "data-escalation" ? session : { title: kind[1], session: session });
        beep();
        if (window.Notification && Notification.permission === "granted") {
          // the session id is agent data: a notification shows it as plain text
          new Notification(kind[1], { body: session, tag: key });
        }
      });
    });
  }
  document.addEventListener("click", function (e) {
    var button = e.target.closest && e.target.closest("[data-alerts-toggle]");
    if (!button) return;
    var on = !alertsOn();
    try { localStorage.setItem(ALERTS_KEY, on ? "on" : "off"); } catch (err) { /* private mode */ }
    if (on) {
      // a click is the user gesture browsers need to allow sound and to ask for permission
      var Context = window.AudioContext || window.webkitAudioContext;
      if (Context && !audio) audio = new Context();
      if (window.Notification && Notification.permission === "default") {
        Notification.requestPermission().then(showAlertsState);
      }
    }
    showAlertsState();
  });
  document.addEventListener("DOMContentLoaded", function () {
    scanEscalations(false);
    showAlertsState();
  });
  document.addEventListener("htmx:wsAfterMessage", function () { scanEscalations(true); });
  document.addEventListener("coordinator:polled", function () { scanEscalations(true); });
  // a pickup row goes over its SLA on the clock, with no update from the server
  setInterval(function () { scanEscalations(true); }, 1000);

  // The session timeline's filter by event type: rows of other types are hidden, those that
  // arrive live or with "load older" too.
  function filterTimeline() {
    var select = document.querySelector("[data-timeline-filter]");
    var wanted = select ? select.value : "";
    document.querySelectorAll("#timeline > li.event").forEach(function (li) {
      li.hidden = wanted !== "" && !li.classList.contains("type-" + wanted);
    });
  }
  document.addEventListener("change", function (e) {
    if (e.target.matches && e.target.matches("[data-timeline-filter]")) filterTimeline();
  });
  document.addEventListener("htmx:wsAfterMessage", filterTimeline);
  document.addEventListener("htmx:afterSettle", filterTimeline);
  document.addEventListener("coordinator:polled", filterTimeline);

  // Keyboard shortcuts on the session page: t takes over, r goes to the reply box, h to the
  // hand-back form, ? lists them (Esc closes the list). Keys typed into a field are left alone.
  var SHORTCUTS = [
    ["t", "Take over the session"],
    ["r", "Write a reply (when you control the session)"],
    ["h", "Hand back (when you control the session)"],
    ["?", "Show or hide this list"]
  ];
  var shortcutsHelp = null;
  function toggleShortcuts(show) {
    if (!shortcutsHelp) {
      shortcutsHelp = document.createElement("section");
      shortcutsHelp.className = "shortcuts-help";
      shortcutsHelp.id = "shortcuts-help";
      shortcutsHelp.setAttribute("role", "dialog");
      shortcutsHelp.setAttribute("aria-label", "Keyboard shortcuts");
      var title = document.createElement("strong");
      title.textContent = "Keyboard shortcuts";
      var list = document.createElement("dl");
      SHORTCUTS.forEach(function (pair) {
        var key = document.createElement("dt"), kbd = document.createElement("kbd");
        kbd.textContent = pair[0];
        key.appendChild(kbd);
        var what = document.createElement("dd");
        what.textContent = pair[1];
        list.appendChild(key);
        list.appendChild(what);
      });
      shortcutsHelp.appendChild(title);
      shortcutsHelp.appendChild(list);
      shortcutsHelp.hidden = true;
      document.body.appendChild(shortcutsHelp);
    }
    shortcutsHelp.hidden = show === undefined ? !shortcutsHelp.hidden : !show;
  }
  function say(message) {
    var result = document.getElementById("action-result");
    if (result) {
      result.className = "result result-error";
      result.textContent = message;
    }
  }
  function focusField(id, missing) {
    var field = document.getElementById(id);
    if (!field) return say(missing);
    field.scrollIntoView({ block: "center" });
    field.focus();
  }
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
    var target = e.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) return;
    if (!document.getElementById("session-actions")) return;
    if (e.key === "Escape" && shortcutsHelp && !shortcutsHelp.hidden) {
      toggleShortcuts(false);
      return;
    }
    if (e.key === "?") {
      toggleShortcuts();
    } else if (e.key === "t") {
      var form = document.querySelector('[data-shortcut-form="take-over"]');
      if (!form) return say("Take over is not offered here (someone controls the session, or you may not act on it).");
      form.requestSubmit();
    } else if (e.key === "r") {
      focusField("reply-text", "Replying needs control of the session: take it over first (t).");
    } else if (e.key === "h") {
      focusField("hb-agent", "Hand back is offered to the person who controls the session.");
    } else {
      return;
    }
    e.preventDefault();
  });

  window.coordinator = {
    refreshTimes: refreshTimes, setLive: setLive, lastEventId: lastEventId,
    isPolling: function () { return polling !== null; },
    alertLog: alertLog
  };
})();
