/* medvlm review: keyboard and saving for the worklist and the review page.
   Everything shown comes from the server's escaped HTML or is set with textContent; nothing here
   builds HTML from data. The page's data is read from <script type="application/json" id="page-data">. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("page-data").textContent || "{}");

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function typing(ev) {
    var t = ev.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }
  function post(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": data.csrf },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return { ok: false, error: "HTTP " + r.status }; })
        .then(function (j) { j.httpStatus = r.status; if (!r.ok) { j.ok = false; } return j; });
    });
  }

  var help = $("#help");
  function toggleHelp(show) { help.hidden = show === undefined ? !help.hidden : !show; }
  $("#help-btn").addEventListener("click", function () { toggleHelp(); });
  help.addEventListener("click", function (ev) { if (ev.target === help) { toggleHelp(false); } });

  function reviewerForm() {
    var form = $("#reviewer-form");
    if (!form) { return; }
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      post("/api/reviewer", { reviewer: $("#reviewer-input").value }).then(function (j) {
        if (j.ok) { location.reload(); } else { alert(j.error || "not accepted"); }
      });
    });
    var change = $("#change-reviewer");
    if (change) {
      change.addEventListener("click", function () { $("#reviewer-change").hidden = false; $("#reviewer-input").focus(); });
    }
  }

  /* ---------------------------------------------------------------- worklist */
  function worklist() {
    reviewerForm();
    var rows = $all("#worklist tbody tr").filter(function (tr) { return tr.getAttribute("data-href"); });
    var sel = -1;
    var last = sessionStorage.getItem("medvlm-last-study");
    function select(i) {
      if (!rows.length) { return; }
      if (sel >= 0) { rows[sel].classList.remove("sel"); }
      sel = Math.max(0, Math.min(rows.length - 1, i));
      rows[sel].classList.add("sel");
      rows[sel].scrollIntoView({ block: "nearest" });
    }
    var start = rows.findIndex(function (tr) { return tr.getAttribute("data-key") === last; });
    select(start >= 0 ? start : 0);
    document.addEventListener("keydown", function (ev) {
      if (typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
      var k = ev.key;
      if (k === "?") { toggleHelp(); }
      else if (k === "Escape") { toggleHelp(false); }
      else if (k === "j" || k === "ArrowDown") { select(sel + 1); }
      else if (k === "k" || k === "ArrowUp") { select(sel - 1); }
      else if ((k === "Enter" || k === "o") && sel >= 0) { location.href = rows[sel].getAttribute("data-href"); }
      else if (k === "t") { location.href = "/?show=todo"; }
      else { return; }
      ev.preventDefault();
    });
  }

  /* ---------------------------------------------------------------- review page */
  function study() {
    var findings = data.findings || [];
    var vocab = {};
    (data.vocabulary || []).forEach(function (v) { vocab[v.code] = v.label; });
    var state = { verdicts: {}, notes: {}, added: [], risk: null, comment: "" };
    var dirty = false, armed = null, saving = false;
    var draftKey = "medvlm-draft:" + [data.key, data.reviewer, data.report_sha256, data.read].join(":");
    var statusEl = $("#status");
    var rows = $all("#findings tbody tr");
    var sel = -1;

    function say(text, cls) { statusEl.textContent = text; statusEl.className = cls || ""; }
    function changed() {
      dirty = true; armed = null;
      try { sessionStorage.setItem(draftKey, JSON.stringify(state)); } catch (e) { /* storage full or off */ }
    }

    /* findings and verdicts */
    function rowOf(id) { return rows.find(function (tr) { return tr.getAttribute("data-id") === id; }); }
    function paintRow(tr) {
      var id = tr.getAttribute("data-id");
      $all(".verdicts .btn", tr).forEach(function (b) {
        b.setAttribute("aria-pressed", String(state.verdicts[id] === b.getAttribute("data-v")));
      });
      var note = $(".fnote", tr);
      note.value = state.notes[id] || "";
      if (state.notes[id]) { note.hidden = false; }
    }
    function select(i) {
      if (!rows.length) { return; }
      if (sel >= 0) { rows[sel].classList.remove("sel"); }
      $all("mark.current").forEach(function (m) { m.classList.remove("current"); });
      sel = Math.max(0, Math.min(rows.length - 1, i));
      var tr = rows[sel];
      tr.classList.add("sel");
      tr.scrollIntoView({ block: "nearest" });
      $all("#answer mark").forEach(function (m) {
        if (m.classList.contains("ev-" + tr.getAttribute("data-id"))) { m.classList.add("current"); }
      });
    }
    function setVerdict(i, v) {
      var tr = rows[i];
      if (!tr) { return; }
      var id = tr.getAttribute("data-id");
      if (state.verdicts[id] === v || v === null) { delete state.verdicts[id]; } else { state.verdicts[id] = v; }
      paintRow(tr);
      changed();
    }
    function nextUnmarked(from) {
      for (var j = 1; j <= rows.length; j++) {
        var i = (from + j) % rows.length;
        if (!state.verdicts[rows[i].getAttribute("data-id")]) { return i; }
      }
      return -1;
    }
    function unmarked() { return rows.filter(function (tr) { return !state.verdicts[tr.getAttribute("data-id")]; }).length; }
    rows.forEach(function (tr, i) {
      tr.addEventListener("click", function (ev) {
        select(i);
        var b = ev.target.closest ? ev.target.closest("button[data-v]") : null;
        if (b) { setVerdict(i, b.getAttribute("data-v")); }
      });
      $(".fnote", tr).addEventListener("input", function (ev) {
        state.notes[tr.getAttribute("data-id")] = ev.target.value; changed();
      });
    });

    /* risk */
    var riskBtns = $all("#riskbtns .btn");
    function paintRisk() {
      riskBtns.forEach(function (b) { b.setAttribute("aria-pressed", String(b.getAttribute("data-risk") === state.risk)); });
    }
    function setRisk(level) { state.risk = level; paintRisk(); changed(); }
    riskBtns.forEach(function (b) {
      b.addEventListener("click", function () { setRisk(state.risk === b.getAttribute("data-risk") ? null : b.getAttribute("data-risk")); });
    });

    /* added findings */
    var list = $("#added-list"), codeSel = $("#add-code"), sideSel = $("#add-side");
    function paintAdded() {
      while (list.firstChild) { list.removeChild(list.firstChild); }
      state.added.forEach(function (a, i) {
        var li = document.createElement("li");
        li.setAttribute("data-code", a.code);
        li.appendChild(document.createTextNode((vocab[a.code] || a.code) + (a.laterality ? " (" + a.laterality + ")" : "")));
        var x = document.createElement("button");
        x.type = "button"; x.title = "remove"; x.textContent = "×";
        x.addEventListener("click", function () { state.added.splice(i, 1); paintAdded(); changed(); });
        li.appendChild(x);
        list.appendChild(li);
      });
    }
    function addFinding() {
      var code = codeSel.value;
      if (!code) { codeSel.focus(); return; }
      var side = sideSel.value || null;
      var existing = state.added.find(function (a) { return a.code === code; });
      if (existing) { existing.laterality = side; } else { state.added.push({ code: code, laterality: side, note: "" }); }
      codeSel.value = ""; sideSel.value = "";
      paintAdded(); changed();
      codeSel.blur(); sideSel.blur();
    }
    $("#add-btn").addEventListener("click", addFinding);
    [codeSel, sideSel].forEach(function (el) {
      el.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter") { ev.preventDefault(); ev.stopPropagation(); addFinding(); }
        else if (ev.key === "Escape") { ev.preventDefault(); ev.stopPropagation(); el.blur(); }
      });
    });

    /* comment */
    var comment = $("#comment");
    comment.addEventListener("input", function () { state.comment = comment.value; changed(); });

    /* state from the server's last save, or an unsaved draft of this tab */
    function load(src) {
      state.verdicts = {}; state.notes = {};
      Object.keys(src.verdicts || {}).forEach(function (id) {
        var v = src.verdicts[id] || {};
        if (rowOf(id)) {
          if (v.verdict) { state.verdicts[id] = v.verdict; }
          if (v.note) { state.notes[id] = v.note; }
        }
      });
      state.added = (src.added || []).filter(function (a) { return vocab[a.code]; })
        .map(function (a) { return { code: a.code, laterality: a.laterality || null, note: a.note || "" }; });
      state.risk = src.risk_level || null;
      state.comment = src.comment || "";
    }
    var prefill = data.prefill;
    if (prefill) {
      load(prefill);
      if (prefill.from_first && prefill.added.length) { say("your first read's findings the model did not report are listed as missed; check them"); }
      else if (prefill.time) { say("your saved review of " + prefill.time.slice(0, 16).replace("T", " ") + " UTC", "ok"); }
    }
    var draft = null;
    try { draft = JSON.parse(sessionStorage.getItem(draftKey) || "null"); } catch (e) { draft = null; }
    if (draft) {
      state.verdicts = draft.verdicts || {}; state.notes = draft.notes || {}; state.added = draft.added || [];
      state.risk = draft.risk || null; state.comment = draft.comment || "";
      dirty = true;
      say("unsaved marks of this tab restored", "warn");
    }
    rows.forEach(paintRow);
    paintRisk(); paintAdded();
    comment.value = state.comment;
    select(rows.length ? Math.max(0, nextUnmarked(-1)) : -1);

    /* saving */
    function payload() {
      var verdicts = {};
      rows.forEach(function (tr) {
        var id = tr.getAttribute("data-id");
        if (state.verdicts[id] || state.notes[id]) { verdicts[id] = { verdict: state.verdicts[id] || null, note: state.notes[id] || "" }; }
      });
      return { report_sha256: data.report_sha256, read: data.read, verdicts: verdicts, added: state.added,
               risk_level: state.risk, comment: state.comment };
    }
    function save(next) {
      if (saving) { return; }
      var open = unmarked();
      var warn = null;
      if (open && data.read !== "first") { warn = open + " finding" + (open === 1 ? "" : "s") + " without a verdict"; }
      else if (!state.risk) { warn = "no risk level of yours"; }
      if (warn && armed !== "save") {
        armed = "save";
        say(warn + ": Enter again saves anyway" + (open ? "; A agrees with the rest" : "; 1–6 sets it"), "warn");
        return;
      }
      saving = true;
      say("saving…");
      post(data.save_url, payload()).then(function (j) {
        saving = false; armed = null;
        if (!j.ok) { say("NOT saved: " + (j.error || "error") + " — your marks are kept in this tab", "bad"); return; }
        dirty = false;
        try { sessionStorage.removeItem(draftKey); } catch (e) { /* ignore */ }
        sessionStorage.setItem("medvlm-last-study", data.key);
        say(j.message + " · " + j.time.slice(11, 19) + " UTC", j.status === "queued" || j.stale ? "warn" : "ok");
        if (j.reload) { location.reload(); }
        else if (next) { location.href = j.next || j.worklist; }
      }, function () {
        saving = false;
        say("NOT saved: the review server did not answer — your marks are kept in this tab; try again", "bad");
      });
    }
    $("#save-next").addEventListener("click", function () { save(true); });
    var stay = $("#save-stay");
    if (stay) { stay.addEventListener("click", function () { save(false); }); }

    function go(url, what) {
      if (!url) { say("no " + what + " study in this list", "warn"); return; }
      if (dirty && armed !== what) { armed = what; say("not saved: press again to leave without saving, Enter saves", "warn"); return; }
      sessionStorage.setItem("medvlm-last-study", data.key);
      location.href = url;
    }
    window.addEventListener("beforeunload", function (ev) { if (dirty && !saving && armed === null) { ev.preventDefault(); ev.returnValue = ""; } });

    /* image viewer: wheel zoom at the pointer, drag to pan, fit, invert, next image */
    var stage = $("#stage"), img = $("#view-img"), zoomLabel = $("#zoom-label");
    var view = { s: 1, x: 0, y: 0, fit: 1 };
    function apply() {
      if (!img) { return; }
      img.style.transform = "translate(" + view.x + "px," + view.y + "px) scale(" + view.s + ")";
      zoomLabel.textContent = Math.round(100 * view.s / view.fit) + "%";
    }
    function fit() {
      if (!img || !img.naturalWidth) { return; }
      var w = stage.clientWidth, h = stage.clientHeight;
      view.fit = view.s = Math.min(w / img.naturalWidth, h / img.naturalHeight);
      view.x = (w - img.naturalWidth * view.s) / 2; view.y = (h - img.naturalHeight * view.s) / 2;
      apply(); zoomLabel.textContent = "fit";
    }
    function zoomAt(factor, cx, cy) {
      var s = Math.max(view.fit * 0.5, Math.min(view.fit * 16, view.s * factor));
      view.x = cx - (cx - view.x) * (s / view.s); view.y = cy - (cy - view.y) * (s / view.s); view.s = s;
      apply();
    }
    if (img) {
      if (img.complete) { fit(); } else { img.addEventListener("load", fit); }
      window.addEventListener("resize", fit);
      stage.addEventListener("wheel", function (ev) {
        ev.preventDefault();
        var r = stage.getBoundingClientRect();
        zoomAt(ev.deltaY < 0 ? 1.15 : 1 / 1.15, ev.clientX - r.left, ev.clientY - r.top);
      }, { passive: false });
      var drag = null;
      stage.addEventListener("pointerdown", function (ev) {
        drag = { x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y };
        stage.setPointerCapture(ev.pointerId); stage.classList.add("dragging");
      });
      stage.addEventListener("pointermove", function (ev) {
        if (!drag) { return; }
        view.x = drag.vx + ev.clientX - drag.x; view.y = drag.vy + ev.clientY - drag.y; apply();
      });
      ["pointerup", "pointercancel"].forEach(function (t) {
        stage.addEventListener(t, function () { drag = null; stage.classList.remove("dragging"); });
      });
      stage.addEventListener("dblclick", fit);
    }
    var thumbs = $all("#thumbs button"), current = 0;
    function showImage(i) {
      if (!thumbs.length || !img) { return; }
      current = (i + thumbs.length) % thumbs.length;
      thumbs.forEach(function (b, j) { b.setAttribute("aria-pressed", String(j === current)); });
      $all("[data-caption]").forEach(function (c) { c.hidden = c.getAttribute("data-caption") !== String(current); });
      img.addEventListener("load", fit, { once: true });
      img.src = thumbs[current].getAttribute("data-src");
    }
    thumbs.forEach(function (b, i) { b.addEventListener("click", function () { showImage(i); }); });

    /* keys */
    document.addEventListener("keydown", function (ev) {
      var k = ev.key;
      if (typing(ev)) {
        if (k === "Escape") { ev.target.blur(); ev.preventDefault(); }
        else if (k === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.target.blur(); save(true); ev.preventDefault(); }
        return;
      }
      if (ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
      if (!help.hidden && k !== "?" && k !== "Escape") { return; }
      var r = data.risk_keys || [];
      if (k === "?") { toggleHelp(); }
      else if (k === "Escape") { toggleHelp(false); armed = null; }
      else if (k === "Enter") { save(!ev.shiftKey || data.read === "first"); }
      else if (k === "j" || k === "ArrowDown") { select(sel + 1); }
      else if (k === "k" || k === "ArrowUp") { select(sel - 1); }
      else if ((k === "a" || k === "d" || k === "u") && sel >= 0) {
        var v = { a: "agree", d: "disagree", u: "unsure" }[k];
        var was = state.verdicts[rows[sel].getAttribute("data-id")];
        setVerdict(sel, v);
        if (was !== v) { var n = nextUnmarked(sel); if (n >= 0) { select(n); } }
      }
      else if (k === "A") {
        rows.forEach(function (tr) { var id = tr.getAttribute("data-id"); if (!state.verdicts[id]) { state.verdicts[id] = "agree"; } paintRow(tr); });
        changed();
        say("agreed with every finding not yet marked");
      }
      else if (k === "x" && sel >= 0) { setVerdict(sel, null); }
      else if (k === "N" && sel >= 0) { var note = $(".fnote", rows[sel]); note.hidden = false; note.focus(); }
      else if (/^[1-6]$/.test(k)) { setRisk(r[Number(k) - 1]); }
      else if (k === "0") { setRisk(null); }
      else if (k === "=" && data.model_risk) { setRisk(data.model_risk); }
      else if (k === "m") { codeSel.focus(); }
      else if (k === "c") { comment.focus(); }
      else if (k === "n" || k === "ArrowRight") { go(data.next, "next"); }
      else if (k === "p" || k === "ArrowLeft") { go(data.prev, "previous"); }
      else if (k === "w") { go(data.worklist, "worklist"); }
      else if (k === "+" || k === "-") {
        if (img) { zoomAt(k === "+" ? 1.25 : 1 / 1.25, stage.clientWidth / 2, stage.clientHeight / 2); }
      }
      else if (k === "f") { fit(); }
      else if (k === "i") { if (img) { img.classList.toggle("inverted"); } }
      else if (k === "v") { showImage(current + 1); }
      else { return; }
      ev.preventDefault();
    });
    $("#prev").addEventListener("click", function (ev) { ev.preventDefault(); go(data.prev, "previous"); });
    $("#next").addEventListener("click", function (ev) { ev.preventDefault(); go(data.next, "next"); });
  }

  if (data.page === "worklist") { worklist(); }
  else if (data.page === "study") { study(); }
  else {
    document.addEventListener("keydown", function (ev) { if (ev.key === "?") { toggleHelp(); } });
  }
})();
