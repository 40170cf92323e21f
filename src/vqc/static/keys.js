// The API key of vqc's pages (the service's operator page, the studio), one copy for them all.
// A request answered 401 shows one form (however many requests meet the 401 at once), keeps the
// key in this browser and is sent again with it, so the key is asked once; a key that is refused
// asks again and says so. "forget key" in the page's header shows only while a key is kept.
//
// A page loads it before its own script:
//   <script src="/static/keys.js" data-storage="vqc-api-key" data-asker="This service"></script>
// data-storage: the localStorage entry the key is kept in; data-asker: who asks, on the form.
// Then keyedFetch(path, init) is fetch with the kept key (init: method, body, headers).
"use strict";

const keyedFetch = (() => {
  const STORAGE = document.currentScript.dataset.storage || "vqc-api-key";
  const ASKER = document.currentScript.dataset.asker || "This page";
  const element = (html) => { const t = document.createElement("template"); t.innerHTML = html.trim(); return t.content.firstChild; };

  document.head.append(element(`<style>
    #keyform { display: none; position: fixed; inset: 0; z-index: 10; background: rgba(29, 35, 48, .6);
               align-items: center; justify-content: center; }
    #keyform.shown { display: flex; }
    #keyform div { background: #fff; color: #1d2330; padding: 24px; border-radius: 12px; display: grid; gap: 12px;
                   min-width: 320px; }
    #keyform .err { color: #d64545; }
    #forget { color: #fff; font-size: 12px; }
    #forget.hidden { display: none; }
  </style>`));
  const form = element(`<form id="keyform"><div>
    <label for="key"></label>
    <input id="key" type="password" autocomplete="off">
    <span id="keyerror" class="err"></span>
    <button type="submit" class="primary">Use key</button>
  </div></form>`);
  form.querySelector("label").textContent = `${ASKER} asks for an API key (asked once, kept in this browser)`;
  document.body.prepend(form);
  const forget = element('<a id="forget" href="#">forget key</a>');
  (document.querySelector("header") || document.body).append(forget);

  const showForget = () => forget.classList.toggle("hidden", !localStorage.getItem(STORAGE));
  showForget();
  forget.addEventListener("click", (e) => { e.preventDefault(); localStorage.removeItem(STORAGE); location.reload(); });

  function askKey(refused) {
    document.getElementById("keyerror").textContent = refused ? "that key was refused" : "";
    form.classList.add("shown");
    document.getElementById("key").focus();
    return new Promise(resolve => {
      form.onsubmit = (e) => {
        e.preventDefault();
        localStorage.setItem(STORAGE, document.getElementById("key").value.trim());
        document.getElementById("key").value = "";
        showForget();
        form.classList.remove("shown");
        resolve();
      };
    });
  }

  let asking = null;
  return async function keyedFetch(path, init = {}) {
    for (;;) {
      const key = localStorage.getItem(STORAGE);
      const headers = { ...(init.headers || {}), ...(key ? { Authorization: "Bearer " + key } : {}) };
      const response = await fetch(path, { ...init, headers });
      if (response.status !== 401) return response;
      asking = asking || askKey(Boolean(key)).finally(() => { asking = null; });
      await asking;
    }
  };
})();
