/**
 * The API key: kept in this browser, sent as `Authorization: Bearer <key>` with every API request,
 * asked for before the first request when the server needs one, and again when the server refuses it.
 */

const STORAGE_KEY = "loupe.apiKey";

let required = false;
let askForKey = async () => null;
let asking = null;
let memoryKey = "";  // the key when localStorage refuses to keep it

/** The stored key, or "" when there is none (or storage is unavailable). */
function storedKey() {
  try {
    return window.localStorage.getItem(STORAGE_KEY) || "";
  } catch {
    return "";
  }
}

/** Keep a key for the next requests (and the next visits). */
export function storeKey(key) {
  try {
    window.localStorage.setItem(STORAGE_KEY, key);
  } catch {
    // private browsing or storage full: the key is kept in memory for this page only
  }
  memoryKey = key;
}

/** Forget the key in this browser. */
export function forgetKey() {
  memoryKey = "";
  try {
    window.localStorage.removeItem(STORAGE_KEY);
  } catch {
    // nothing stored
  }
}

function currentKey() {
  return storedKey() || memoryKey;
}

/**
 * Set up the key handling once, from the page's configuration.
 * @param {{required: boolean, ask: (options: {rejected: boolean}) => Promise<string|null>}} options
 */
export function configureApiKey({ required: isRequired, ask }) {
  required = isRequired;
  askForKey = ask;
}

/** Whether the server asked for a key when it rendered the page. */
export function keyRequired() {
  return required;
}

/** Whether the page holds a key now. */
export function hasKey() {
  return currentKey() !== "";
}

/**
 * Ask the person for a key and store it; one question at a time, however many requests wait for it.
 * @returns {Promise<boolean>} whether a key was given
 */
export function requestKey(rejected = false) {
  if (!asking) {
    asking = askForKey({ rejected }).then((key) => {
      asking = null;
      if (key) storeKey(key);
      return Boolean(key);
    });
  }
  return asking;
}

function withKey(init) {
  const key = currentKey();
  if (!key) return init;
  const headers = new Headers(init.headers || {});
  headers.set("Authorization", `Bearer ${key}`);
  return { ...init, headers };
}

/** Whether a response is the server's 401 for a missing or wrong key (its body is left unread). */
async function isKeyRefusal(response) {
  if (response.status !== 401) return false;
  try {
    const body = await response.clone().json();
    return body?.error?.type === "authentication_error";
  } catch {
    return false;
  }
}

/**
 * `fetch` for the API: with the key, asking for one first when the server needs it and none is held;
 * a refused key is asked for again and the request retried once. The body must be resendable (a string).
 */
export async function apiFetch(url, init = {}) {
  // Declined up front: send anyway, so the caller shows the server's 401 rather than a second question.
  if (required && !hasKey() && !(await requestKey(false))) return fetch(url, init);
  const sentKey = currentKey();
  const response = await fetch(url, withKey(init));
  if (!(await isKeyRefusal(response))) return response;
  // Another request may have had a new key entered meanwhile: then retry with it without asking.
  const renewed = currentKey() !== sentKey || await requestKey(true);
  if (!renewed) return response;  // "Not now": the caller reports the 401
  return fetch(url, withKey(init));
}
