// The demo page: puts a <clarion-inbox> in the navigation bar with the token from the
// URL fragment (#token=...&transport=sse) or the form.
(() => {
  "use strict";
  const slot = document.getElementById("inbox-slot");
  const form = document.getElementById("token-form");
  const field = document.getElementById("token");

  const params = new URLSearchParams(window.location.hash.slice(1));

  function show(token) {
    slot.replaceChildren();
    if (!token) return;
    const inbox = document.createElement("clarion-inbox");
    inbox.setAttribute("token", token);
    inbox.setAttribute("base-url", window.location.origin);
    if (params.get("transport")) inbox.setAttribute("transport", params.get("transport"));
    slot.append(inbox);
  }

  const fromFragment = params.get("token");
  if (fromFragment) field.value = fromFragment;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    show(field.value.trim());
  });
  show(fromFragment);
})();
