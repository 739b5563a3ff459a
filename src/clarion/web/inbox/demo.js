// The demo page: puts a <clarion-inbox> in the navigation bar with the token from the
// URL fragment (#token=...) or the form.
(() => {
  "use strict";
  const slot = document.getElementById("inbox-slot");
  const form = document.getElementById("token-form");
  const field = document.getElementById("token");

  function show(token) {
    slot.replaceChildren();
    if (!token) return;
    const inbox = document.createElement("clarion-inbox");
    inbox.setAttribute("token", token);
    inbox.setAttribute("base-url", window.location.origin);
    slot.append(inbox);
  }

  const fromFragment = new URLSearchParams(window.location.hash.slice(1)).get("token");
  if (fromFragment) field.value = fromFragment;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    show(field.value.trim());
  });
  show(fromFragment);
})();
