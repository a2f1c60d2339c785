/**
 * Boxes and points an answer located, drawn over the image they belong to: labelled boxes placed in
 * percentages of the image (so they stay on their objects however the image is scaled: a narrow
 * window, a phone), a toggle to hide them, and hover or focus on a box or its list entry to pick it out.
 * Labels come from the model: only ever set as textContent.
 */

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A number as a CSS percentage of `size`, kept inside 0–100. */
function percent(value, size) {
  return `${Math.min(100, Math.max(0, (value / size) * 100)).toFixed(3)}%`;
}

/** Where a box or point sits, as percentages of an image of `width`×`height` pixels. */
export function placement(region, width, height) {
  if (Array.isArray(region.bbox)) {
    const [x1, y1, x2, y2] = region.bbox;
    return {
      left: percent(x1, width), top: percent(y1, height),
      width: percent(x2 - x1, width), height: percent(y2 - y1, height),
    };
  }
  const [x, y] = region.point;
  return { left: percent(x, width), top: percent(y, height) };
}

/** "3 boxes", "1 point", "2 boxes and 1 point". */
export function describeRegions(regions) {
  const boxes = regions.filter((r) => Array.isArray(r.bbox)).length;
  const points = regions.length - boxes;
  const words = [];
  if (boxes) words.push(`${boxes} box${boxes === 1 ? "" : "es"}`);
  if (points) words.push(`${points} point${points === 1 ? "" : "s"}`);
  return words.join(" and ");
}

/**
 * A figure of the image with its regions drawn over it.
 * @param {{dataUrl: string, name?: string, width?: number, height?: number}} image  the image the
 *        regions are in (their coordinates are in its pixels: the image as sent or stored)
 * @param {{label: string, bbox?: number[], point?: number[]}[]} regions
 * @returns {HTMLElement}
 */
export function renderBoxes(image, regions) {
  const figure = element("figure", "boxes");
  figure.dataset.count = String(regions.length);
  const frame = element("div", "boxes-frame");
  const img = element("img");
  img.src = image.dataUrl;
  img.alt = `${image.name || "The image"} with ${describeRegions(regions)} marked`;
  img.decoding = "async";
  if (image.width && image.height) {
    img.width = image.width;
    img.height = image.height;
  }
  frame.append(img);
  const layer = element("div", "boxes-layer");
  frame.append(layer);

  const list = element("ol", "boxes-list");
  const pairs = regions.map((region, i) => {
    const kind = Array.isArray(region.bbox) ? "box" : "point";
    const name = region.label || `${kind} ${i + 1}`;
    const mark = element("div", `box-mark ${kind}`);
    mark.dataset.index = String(i);
    mark.append(element("span", "box-label", name));
    layer.append(mark);
    const entry = element("button", "box-entry", name);
    entry.type = "button";
    entry.dataset.index = String(i);
    const item = element("li");
    item.append(entry);
    list.append(item);
    return { region, mark, entry };
  });

  const place = (width, height) => {
    for (const { region, mark } of pairs) Object.assign(mark.style, placement(region, width, height));
  };
  if (image.width && image.height) place(image.width, image.height);
  else img.addEventListener("load", () => place(img.naturalWidth, img.naturalHeight), { once: true });

  const highlight = (index) => {
    figure.classList.toggle("highlighting", index !== null);
    for (const { mark, entry } of pairs) {
      const on = mark.dataset.index === index;
      mark.classList.toggle("active", on);
      entry.classList.toggle("active", on);
    }
  };
  for (const { mark, entry } of pairs) {
    for (const node of [mark, entry]) {
      node.addEventListener("pointerenter", () => highlight(node.dataset.index));
      node.addEventListener("pointerleave", () => highlight(null));
    }
    entry.addEventListener("focus", () => highlight(entry.dataset.index));
    entry.addEventListener("blur", () => highlight(null));
  }

  const caption = element("figcaption", "boxes-caption");
  const toggle = element("button", "button small boxes-toggle", "Hide boxes");
  toggle.type = "button";
  toggle.setAttribute("aria-pressed", "true");
  toggle.addEventListener("click", () => {
    const shown = toggle.getAttribute("aria-pressed") !== "true";
    toggle.setAttribute("aria-pressed", String(shown));
    toggle.textContent = shown ? "Hide boxes" : "Show boxes";
    layer.hidden = !shown;
  });
  caption.append(element("span", "boxes-summary", `Found ${describeRegions(regions)}:`), list, toggle);
  figure.append(frame, caption);
  return figure;
}
