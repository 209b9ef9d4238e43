// Web chat of local mode: long-polls /api/state and draws the chat; sends text, photos and
// button presses. Plain DOM, no dependencies; all text is inserted with textContent.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const chat = $("chat");
  const list = $("messages");
  const input = $("input");
  const fileInput = $("file");
  const lang = (navigator.language || "en").toLowerCase();
  const HEADERS = { "X-Local-Chat": "1" };

  let version = -1;
  let noticeId = 0;
  let noticesPrimed = false; // the first state only marks old notices as seen (no replay)
  let pinned = true; // the view follows new content until the user scrolls up
  let attachment = null;
  let commands = [];
  const rendered = new Map(); // message id -> { el, sig }

  // ------------------------------------------------------------------ rendering

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function timeOf(unix) {
    const d = new Date(unix * 1000);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function mediaNode(m) {
    if (!m.media) return null;
    const box = el("div", "media");
    if (m.kind === "photo" || m.kind === "animation") {
      const img = el("img");
      // Eager: a lazy image at the bottom edge may never load, and it grows the chat when it
      // does; followMedia keeps the view at the bottom then (unless the user scrolled up).
      img.addEventListener("load", followMedia);
      img.src = m.media;
      img.alt = m.caption || "image";
      if (m.w && m.h) img.style.aspectRatio = `${m.w} / ${m.h}`;
      const link = el("a");
      link.href = m.media;
      link.target = "_blank";
      link.rel = "noopener";
      link.appendChild(img);
      box.appendChild(link);
    } else if (m.kind === "video") {
      const video = el("video");
      video.src = m.media;
      video.controls = true;
      video.loop = true;
      video.muted = true;
      video.autoplay = true;
      video.addEventListener("loadedmetadata", followMedia);
      box.appendChild(video);
    } else {
      box.className = "media file";
      const link = el("a", "file-link");
      link.href = `${m.media}?download=1`;
      link.appendChild(el("span", "file-icon", "📄"));
      link.appendChild(el("span", "file-name", m.filename || "file"));
      box.appendChild(link);
    }
    return box;
  }

  function keyboardNode(m) {
    if (!m.buttons) return null;
    const kb = el("div", "keyboard");
    for (const row of m.buttons) {
      const r = el("div", "kb-row");
      for (const b of row) {
        if (b.url) {
          const a = el("a", "kb-button", b.text);
          a.href = b.url;
          a.target = "_blank";
          a.rel = "noopener";
          r.appendChild(a);
          continue;
        }
        const btn = el("button", "kb-button", b.text);
        btn.type = "button";
        btn.dataset.data = b.callback_data || "";
        btn.addEventListener("click", () => press(m.id, b.callback_data, btn));
        r.appendChild(btn);
      }
      kb.appendChild(r);
    }
    return kb;
  }

  function invoiceNode(m) {
    if (!m.invoice) return null;
    const box = el("div", "invoice");
    box.appendChild(el("div", "invoice-title", m.invoice.title || ""));
    box.appendChild(el("div", "invoice-text", m.invoice.description || ""));
    const pay = el("button", "kb-button pay-button", `Pay (test) · ${m.invoice.stars} ⭐`);
    pay.type = "button";
    pay.title = "Local mode: no real Stars are charged";
    pay.addEventListener("click", () => payInvoice(m.id, pay));
    box.appendChild(pay);
    return box;
  }

  function paymentText(m) {
    if (m.successful_payment) return `⭐ Paid ${m.successful_payment.stars} Stars (test)`;
    if (m.refunded_payment) return `⭐ ${m.refunded_payment.stars} Stars refunded (test)`;
    return null;
  }

  function messageNode(m) {
    const li = el("li", `msg ${m.out ? "out" : "in"}`);
    li.dataset.id = m.id;
    li.dataset.edits = m.edits;
    if (m.kind) li.dataset.kind = m.kind;
    const bubble = el("div", "bubble");
    if (m.reply_to) {
      const quote = el("div", "quote", m.reply_to.snippet || "…");
      quote.addEventListener("click", () => {
        const target = rendered.get(m.reply_to.id);
        if (target) target.el.scrollIntoView({ behavior: "smooth", block: "center" });
      });
      bubble.appendChild(quote);
    }
    const media = mediaNode(m);
    if (media) {
      bubble.appendChild(media);
      bubble.classList.add("has-media");
    }
    const invoice = invoiceNode(m);
    if (invoice) bubble.appendChild(invoice);
    const body = m.text !== null && m.text !== undefined ? m.text : m.caption || paymentText(m);
    if (body) bubble.appendChild(el("div", "text", body));
    const meta = el("div", "meta");
    if (m.edits) meta.appendChild(el("span", "edited", "edited"));
    meta.appendChild(el("span", "time", timeOf(m.date)));
    bubble.appendChild(meta);
    li.appendChild(bubble);
    const kb = keyboardNode(m);
    if (kb) li.appendChild(kb);
    return li;
  }

  function nearBottom() {
    return chat.scrollHeight - chat.scrollTop - chat.clientHeight < 120;
  }

  function stickToBottom(force) {
    if (force || pinned || nearBottom()) {
      chat.scrollTop = chat.scrollHeight;
      pinned = true;
    }
  }

  // Media that finished loading made the chat taller; nearBottom() is already false then, so
  // follow it when the view was pinned to the bottom before it grew.
  function followMedia() {
    if (pinned) chat.scrollTop = chat.scrollHeight;
  }

  // Only the user unpins the view: a scroll shortly after their wheel, touch or key input
  // decides. Scrolls the browser makes itself (scroll anchoring while a message above is
  // edited, content growing) leave it pinned.
  let lastUserInput = -Infinity;
  const userInput = () => (lastUserInput = performance.now());
  for (const name of ["wheel", "touchmove", "keydown", "pointerdown"]) {
    chat.addEventListener(name, userInput, { passive: true });
  }
  chat.addEventListener("scroll", () => {
    if (performance.now() - lastUserInput < 1000) pinned = nearBottom();
  });
  // Whatever makes the chat taller (an image or video loading, an edit) keeps a pinned view
  // at the bottom.
  if (typeof ResizeObserver === "function") {
    new ResizeObserver(followMedia).observe(list);
  }

  function renderMessages(messages) {
    const stick = nearBottom();
    let added = false;
    const seen = new Set();
    let previous = null;
    for (const m of messages) {
      seen.add(m.id);
      const sig = JSON.stringify(m);
      const known = rendered.get(m.id);
      let node = known ? known.el : null;
      if (!known || known.sig !== sig) {
        const fresh = messageNode(m);
        if (node) {
          node.replaceWith(fresh);
          if (known.sig && known.el.dataset.edits !== fresh.dataset.edits) {
            fresh.classList.add("flash");
          }
        } else {
          added = true;
        }
        node = fresh;
        rendered.set(m.id, { el: node, sig });
      }
      const expected = previous ? previous.nextSibling : list.firstChild;
      if (expected !== node) list.insertBefore(node, expected);
      previous = node;
    }
    for (const [id, item] of rendered) {
      if (!seen.has(id)) {
        item.el.remove();
        rendered.delete(id);
      }
    }
    $("welcome").hidden = messages.length > 0;
    stickToBottom(stick || added);
  }

  let toastTimer = null;
  function toast(text, alert) {
    const t = $("toast");
    t.textContent = text;
    t.classList.toggle("alert", !!alert);
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (t.hidden = true), alert ? 6000 : 3000);
  }

  function apply(state) {
    version = state.version;
    commands = state.commands || [];
    $("bot-name").textContent = state.bot.name;
    const badge = $("backend-badge");
    if (state.backend === "preview") {
      badge.textContent = "preview backend";
      badge.title = "Images are rendered locally as labelled placeholders (no ComfyDeploy key)";
      badge.hidden = false;
    } else {
      badge.hidden = true;
    }
    $("status").textContent = state.typing ? "typing…" : `@${state.bot.username} · local mode`;
    $("typing").hidden = !state.typing;
    renderMessages(state.messages);
    for (const n of state.notices) {
      noticeId = Math.max(noticeId, n.id);
      if (noticesPrimed) toast(n.text, n.alert);
    }
    noticesPrimed = true; // notices of before this page load are not shown again
  }

  // ------------------------------------------------------------------ network

  async function poll() {
    let failures = 0;
    for (;;) {
      const wait = version < 0 ? 0 : 25;
      const url = `/api/state?since=${version}&wait=${wait}&notice=${noticeId}&lang=${encodeURIComponent(lang)}`;
      try {
        const res = await fetch(url, { cache: "no-store" });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        apply(await res.json());
        failures = 0;
      } catch (err) {
        failures += 1;
        $("status").textContent = "reconnecting…";
        await new Promise((r) => setTimeout(r, Math.min(5000, 500 * failures)));
      }
    }
  }

  async function post(url, body) {
    const res = await fetch(url, {
      method: "POST",
      headers: body instanceof FormData ? HEADERS : { ...HEADERS, "Content-Type": "application/json" },
      body: body instanceof FormData ? body : JSON.stringify(body),
    });
    if (!res.ok) {
      let message = `HTTP ${res.status}`;
      try {
        message = (await res.json()).error || message;
      } catch (_) {
        /* not JSON */
      }
      throw new Error(message);
    }
    return res.json();
  }

  async function press(messageId, data, button) {
    button.classList.add("pending");
    try {
      await post("/api/press", { message_id: messageId, data, lang });
    } catch (err) {
      toast(`Could not press the button: ${err.message}`, true);
    } finally {
      setTimeout(() => button.classList.remove("pending"), 400);
    }
  }

  async function payInvoice(messageId, button) {
    button.classList.add("pending");
    try {
      await post("/api/pay", { message_id: messageId, lang });
    } catch (err) {
      toast(`Could not pay: ${err.message}`, true);
    } finally {
      setTimeout(() => button.classList.remove("pending"), 400);
    }
  }

  async function sendText(text) {
    await post("/api/send", { text, lang });
  }

  async function submit() {
    const text = input.value.trim();
    if (!text && !attachment) return;
    const sendButton = $("send");
    sendButton.disabled = true;
    try {
      if (attachment) {
        const form = new FormData();
        form.append("file", attachment, attachment.name || "photo.png");
        form.append("caption", text);
        form.append("lang", lang);
        form.append("as_file", $("as-file").checked ? "1" : "0");
        await post("/api/upload", form);
        clearAttachment();
      } else {
        await sendText(text);
      }
      input.value = "";
      autosize();
      hideSuggestions();
    } catch (err) {
      toast(`Not sent: ${err.message}`, true);
    } finally {
      sendButton.disabled = false;
      input.focus();
    }
  }

  // ------------------------------------------------------------------ composer

  function autosize() {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  }

  function setAttachment(file) {
    if (!file || !file.type.startsWith("image/")) {
      toast("Only images can be sent here.", true);
      return;
    }
    attachment = file;
    const thumb = $("attachment-thumb");
    if (thumb.src) URL.revokeObjectURL(thumb.src);
    thumb.src = URL.createObjectURL(file);
    $("attachment-name").textContent = file.name || "image";
    $("as-file").checked = false;
    $("attachment").hidden = false;
    input.placeholder = "Caption — e.g. /i2i watercolor style";
    input.focus();
  }

  function clearAttachment() {
    attachment = null;
    fileInput.value = "";
    $("attachment").hidden = true;
    input.placeholder = "Message — try /make a lighthouse at dusk";
  }

  function hideSuggestions() {
    $("suggestions").hidden = true;
  }

  function showSuggestions() {
    const box = $("suggestions");
    const value = input.value;
    if (!value.startsWith("/") || /\s/.test(value) || !commands.length) {
      hideSuggestions();
      return;
    }
    const prefix = value.slice(1).toLowerCase();
    const matches = commands.filter((c) => c.command.startsWith(prefix));
    box.replaceChildren();
    for (const c of matches) {
      const item = el("button", "suggestion");
      item.type = "button";
      item.appendChild(el("span", "cmd", `/${c.command}`));
      item.appendChild(el("span", "desc", c.description));
      item.addEventListener("click", () => {
        input.value = `/${c.command} `;
        hideSuggestions();
        input.focus();
      });
      box.appendChild(item);
    }
    box.hidden = matches.length === 0;
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    } else if (event.key === "Escape") {
      hideSuggestions();
    }
  });
  input.addEventListener("input", () => {
    autosize();
    showSuggestions();
  });
  fileInput.addEventListener("change", () => {
    if (fileInput.files.length) setAttachment(fileInput.files[0]);
  });
  $("attachment-clear").addEventListener("click", clearAttachment);
  input.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) {
      event.preventDefault();
      setAttachment(item.getAsFile());
    }
  });
  for (const chip of document.querySelectorAll("[data-send]")) {
    chip.addEventListener("click", () =>
      sendText(chip.dataset.send).catch((err) => toast(`Not sent: ${err.message}`, true)),
    );
  }

  // drag & drop anywhere on the page
  const drop = $("drop");
  let dragDepth = 0;
  window.addEventListener("dragenter", (event) => {
    if ([...event.dataTransfer.types].includes("Files")) {
      dragDepth += 1;
      drop.hidden = false;
    }
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) drop.hidden = true;
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    drop.hidden = true;
    const file = event.dataTransfer.files[0];
    if (file) setAttachment(file);
  });

  poll();
})();
