// sgwsss live refinement: a Web Worker (module) that answers sgwsss_live_core.handleMessage requests.
import { handleMessage } from "./sgwsss_live_core.mjs";

const engines = new Map();
self.onmessage = (event) => {
  const { id, msg } = event.data;
  try {
    const { reply, transfer } = handleMessage(engines, msg);
    self.postMessage({ id, reply }, transfer || []);
  } catch (err) {
    self.postMessage({ id, error: String(err && err.stack ? err.stack : err) });
  }
};
