// Slipway's dashboard: the few things that need JavaScript (every page
// works without it). Copy buttons: <button data-copy="text">.
"use strict";
document.addEventListener("click", (e) => {
  const b = e.target.closest("button[data-copy]");
  if (!b || !navigator.clipboard) return;
  navigator.clipboard.writeText(b.dataset.copy).then(() => {
    const was = b.textContent;
    b.textContent = "Copied";
    setTimeout(() => { b.textContent = was; }, 1200);
  });
});

// A running build's log: server-sent events append its lines (as text,
// never HTML) until the build ends; the browser's reconnects resume after
// the last line it got (Last-Event-ID).
const log = document.getElementById("log");
if (log && log.dataset.running === "true" && window.EventSource) {
  const url = log.dataset.events + "?after=" + encodeURIComponent(log.dataset.after);
  const source = new EventSource(url);
  const follow = () => window.scrollTo(0, document.body.scrollHeight);
  source.addEventListener("line", (e) => {
    log.appendChild(document.createTextNode(e.data + "\n"));
    follow();
  });
  source.addEventListener("end", (e) => {
    source.close();
    const state = document.getElementById("state");
    if (state) {
      state.textContent = e.data;
      state.className = "state " + e.data;
    }
    document.dispatchEvent(new Event("build-ended"));
  });
}
document.addEventListener("build-ended", () => {
  const cancel = document.querySelector("form[action$='/cancel']");
  if (cancel) cancel.remove();
});
