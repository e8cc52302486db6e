// masksmith evaluate --html: sort the per-image table by clicking a column header.
// Rows carry their values in data-* attributes (the cells show rounded text); a missing value ("n/a")
// stays at the bottom in either direction, so sorting never mixes undefined scores with real ones.
(function () {
  "use strict";
  const table = document.getElementById("per-image");
  if (!table) return;
  const body = table.tBodies[0];
  const headers = Array.from(table.tHead.rows[0].cells);

  function key(row, column, kind) {
    const raw = row.cells[column].dataset.value;
    if (raw === undefined || raw === "") return null;
    return kind === "num" ? Number(raw) : raw;
  }

  function sortBy(header) {
    const column = headers.indexOf(header);
    const kind = header.dataset.sort;
    // First click on a column sorts it ascending (worst Dice first), the next one reverses.
    const direction = header.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    const sign = direction === "ascending" ? 1 : -1;
    const rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      const x = key(a, column, kind), y = key(b, column, kind);
      if (x === null || y === null) return (x === null) - (y === null);
      if (x < y) return -sign;
      if (x > y) return sign;
      return Number(a.dataset.order) - Number(b.dataset.order);  // stable: ties keep the first order
    });
    rows.forEach(function (row) { body.appendChild(row); });
    headers.forEach(function (cell) { cell.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", direction);
  }

  headers.forEach(function (header) {
    const button = header.querySelector("button");
    if (button) button.addEventListener("click", function () { sortBy(header); });
  });
})();
