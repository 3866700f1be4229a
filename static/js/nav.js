// Small page-wide behaviours: a <select data-nav> navigates to the chosen URL.
// (Inline handlers are avoided so a strict Content-Security-Policy can be turned on.)
for (const select of document.querySelectorAll("select[data-nav]")) {
  select.addEventListener("change", () => { location.href = select.value; });
}
