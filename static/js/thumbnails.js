/**
 * The history's thumbnails. With an API key the server wants `Authorization` on image requests too,
 * which an `<img src>` cannot send: then each image is fetched with the key and shown from a blob URL,
 * revoked when its row leaves the list.
 */
import { keyRequired } from "./api-key.js";
import { fetchImageBlob } from "./api.js";

export class Thumbnails {
  constructor() {
    /** @type {WeakMap<HTMLElement, HTMLImageElement>} a row's thumbnail */
    this.ofRow = new WeakMap();
  }

  /** Show the image at `url` in `img`, the thumbnail of `row`. */
  show(row, img, url) {
    this.ofRow.set(row, img);
    if (!keyRequired()) {
      img.loading = "lazy";
      img.src = url;
      return;
    }
    fetchImageBlob(url).then((blob) => {
      if (img.dataset.released) return;  // the row left the list while its image was on the way
      img.src = URL.createObjectURL(blob);
    }).catch(() => {
      // an image that cannot be fetched leaves the empty square; the row still opens
    });
  }

  /** Free the thumbnail of a row that leaves the list. */
  release(row) {
    const img = this.ofRow.get(row);
    if (!img) return;
    img.dataset.released = "true";
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    this.ofRow.delete(row);
  }

  /** Free the thumbnails of every row of a list about to be emptied. */
  releaseAll(list) {
    for (const row of list.children) this.release(row);
  }
}
