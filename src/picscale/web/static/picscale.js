/* Picscale's page behaviours. The pages carry no inline script (their
   Content-Security-Policy runs scripts from /static only): what a page or an htmx
   fragment needs is marked with ids and data- attributes, and wired here when it
   appears (htmx.onLoad: the page at first, then every fragment swapped in). */
(() => {
  "use strict";

  // the element itself or its descendants that match, each wired once
  const each = (root, selector, wire) => {
    const found = root.matches && root.matches(selector) ? [root] : [];
    for (const el of found.concat(Array.from(root.querySelectorAll(selector)))) {
      if (el.dataset.wired) continue;
      el.dataset.wired = "1";
      wire(el);
    }
  };

  // a job's status from its event stream (Server-Sent Events), no polling; when it ends
  // (or the stream breaks) the fragment is asked for again
  const followJob = (box, onStatus) => {
    const again = () => htmx.ajax("GET", box.dataset.refresh, { target: box.dataset.target, swap: "outerHTML" });
    const source = new EventSource(box.dataset.events);
    source.addEventListener("status", (event) => {
      const job = JSON.parse(event.data);
      onStatus(job);
      if (job.status === "done" || job.status === "failed") { source.close(); again(); }
    });
    source.onerror = () => { source.close(); setTimeout(again, 1000); };
  };

  const wireEditJob = (live) => followJob(live, (job) => {
    const bar = live.querySelector("progress");
    if (job.status === "running") { bar.max = 100; bar.value = 60; }
    live.querySelector(".job-status").textContent =
      "Edit " + job.status + ": making version " + job.version + "…";
  });

  const wireFirstRender = (box) => followJob(box, (job) => {
    if (job.status === "running") {
      box.querySelector(".job-status").textContent = "Making the sizes of your photo…";
    }
  });

  // a slider shows its value in the <output> its data-output names
  const wireSlider = (input) => {
    const out = document.getElementById(input.dataset.output);
    input.addEventListener("input", () => { out.value = input.value; });
  };

  // a form that asks before it is sent (data-confirm: the question)
  const wireConfirm = (form) => {
    form.addEventListener("submit", (e) => { if (!confirm(form.dataset.confirm)) e.preventDefault(); });
  };

  // the crop box drawn on the photo, in the photo's own pixels
  const wireCrop = (form) => {
    const img = document.getElementById("photo"), box = document.getElementById("crop-box");
    if (!img || !box) return;
    const field = (n) => document.getElementById(n);
    const label = field("crop-label");
    let start = null;
    const point = (e) => {
      const r = img.getBoundingClientRect();
      return { x: Math.min(Math.max(e.clientX - r.left, 0), r.width), y: Math.min(Math.max(e.clientY - r.top, 0), r.height) };
    };
    const clear = () => {
      box.style.display = "none";
      for (const n of ["crop_x", "crop_y", "crop_width", "crop_height"]) field(n).value = "";
      label.textContent = "No crop.";
    };
    img.addEventListener("pointerdown", (e) => { e.preventDefault(); start = point(e); img.setPointerCapture(e.pointerId); });
    img.addEventListener("pointermove", (e) => {
      if (!start) return;
      const p = point(e);
      const left = Math.min(start.x, p.x), top = Math.min(start.y, p.y);
      const w = Math.abs(p.x - start.x), h = Math.abs(p.y - start.y);
      Object.assign(box.style, { display: "block", left: left + "px", top: top + "px", width: w + "px", height: h + "px" });
      // from screen pixels to the photo's own pixels
      const scale = Number(img.dataset.width) / img.getBoundingClientRect().width;
      const cx = Math.round(left * scale), cy = Math.round(top * scale);
      const cw = Math.min(Math.max(1, Math.round(w * scale)), Number(img.dataset.width) - cx);
      const ch = Math.min(Math.max(1, Math.round(h * scale)), Number(img.dataset.height) - cy);
      field("crop_x").value = cx; field("crop_y").value = cy;
      field("crop_width").value = cw; field("crop_height").value = ch;
      label.textContent = `Crop: ${cw}×${ch} at (${cx}, ${cy}).`;
    });
    const end = () => { if (start && Number(field("crop_width").value || 0) < 2) clear(); start = null; };
    img.addEventListener("pointerup", end);
    img.addEventListener("pointercancel", end);
    field("clear-crop").addEventListener("click", clear);
  };

  // the upload, with its progress (XMLHttpRequest: fetch reports no upload progress)
  const wireUpload = (form) => {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const bar = document.getElementById("upload-progress");
      const status = document.getElementById("upload-status"), button = document.getElementById("upload-button");
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/v1/photos");
      xhr.setRequestHeader("X-CSRF-Token", document.querySelector('meta[name="csrf-token"]').content);
      xhr.upload.addEventListener("progress", (ev) => {
        if (ev.lengthComputable) { bar.value = Math.round(100 * ev.loaded / ev.total); status.textContent = `Uploading… ${bar.value}%`; }
      });
      xhr.addEventListener("load", () => {
        let body = {};
        try { body = JSON.parse(xhr.responseText); } catch (_) {}
        if (xhr.status === 201) { status.textContent = "Uploaded. Processing…"; window.location = `/p/${body.id}`; }
        else { status.className = "error"; status.textContent = body.detail || `Upload failed (${xhr.status}).`; button.disabled = false; }
      });
      xhr.addEventListener("error", () => { status.className = "error"; status.textContent = "The connection failed: check your network and try again."; button.disabled = false; });
      bar.hidden = false; bar.value = 0; button.disabled = true; status.className = "muted"; status.textContent = "Uploading…";
      xhr.send(new FormData(form));
    });
  };

  htmx.onLoad((root) => {
    each(root, "#job-live", wireEditJob);
    each(root, "#processing", wireFirstRender);
    each(root, "input[data-output]", wireSlider);
    each(root, "form[data-confirm]", wireConfirm);
    each(root, "#edit-form", wireCrop);
    each(root, "#upload-form", wireUpload);
  });
})();
