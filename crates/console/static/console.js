// courier console: the few things that need a script. Every page works
// without it; this only adds copy buttons and a confirmation before
// permanent deletion.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button.copy[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      if (!field) return;
      field.select();
      try {
        await navigator.clipboard.writeText(field.value);
        button.textContent = "Copied";
      } catch {
        // No clipboard access (e.g. plain http): the text is selected,
        // ready for Ctrl+C.
        button.textContent = "Selected: press Ctrl+C";
      }
    });
  }
  const confirmDelete = document.getElementById("confirm-delete");
  if (confirmDelete) {
    confirmDelete.form.addEventListener("submit", (event) => {
      if (!window.confirm("Delete this webhook permanently?")) event.preventDefault();
    });
  }
});
