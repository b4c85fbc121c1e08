// Passkey forms (app/views/passkeys.py): ask the authenticator with the options the form
// carries, put its answer (JSON) into the form and send it. No third-party code; the
// pages work without this script for codes.
"use strict";
(function () {
  function toBytes(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    var raw = atob(b64 + "===".slice((b64.length + 3) % 4));
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes.buffer;
  }
  function toText(buffer) {
    var bytes = new Uint8Array(buffer), raw = "";
    for (var i = 0; i < bytes.length; i++) raw += String.fromCharCode(bytes[i]);
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function descriptors(list) {
    return (list || []).map(function (d) {
      return { type: d.type, id: toBytes(d.id), transports: d.transports };
    });
  }
  function creationOptions(o) {
    o.challenge = toBytes(o.challenge);
    o.user.id = toBytes(o.user.id);
    o.excludeCredentials = descriptors(o.excludeCredentials);
    return { publicKey: o };
  }
  function requestOptions(o) {
    o.challenge = toBytes(o.challenge);
    o.allowCredentials = descriptors(o.allowCredentials);
    return { publicKey: o };
  }
  function encode(credential) {
    var r = credential.response, response = { clientDataJSON: toText(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = toText(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = toText(r.authenticatorData);
      response.signature = toText(r.signature);
      if (r.userHandle) response.userHandle = toText(r.userHandle);
    }
    return JSON.stringify({
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      response: response,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      clientExtensionResults: credential.getClientExtensionResults(),
    });
  }
  function showError(form, text) {
    var box = document.getElementById(form.getAttribute("data-passkey-error"));
    if (!box) return;
    box.textContent = text;
    box.hidden = false;
    box.setAttribute("tabindex", "-1"); // focusable by script only, so it is read out
    box.focus();
  }
  function failure(error) {
    if (error && error.name === "NotAllowedError")
      return "The passkey request was cancelled or timed out. Try again.";
    if (error && error.name === "InvalidStateError")
      return "This passkey is already on your account.";
    return "Your browser could not use a passkey here.";
  }
  function handle(form, create) {
    var options = JSON.parse(form.getAttribute(create ? "data-passkey-create" : "data-passkey-get"));
    var field = form.querySelector(create ? "input[name=credential]" : "input[name=passkey]");
    var busy = false;
    form.addEventListener("submit", function (event) {
      if (field.value) return; // our own submit, the answer in place
      var code = form.querySelector("input[name=code]");
      if (form.hasAttribute("data-passkey-optional") && code && code.value) return;
      event.preventDefault();
      if (busy) return;
      if (!window.PublicKeyCredential || !navigator.credentials) {
        showError(form, "This browser does not support passkeys.");
        return;
      }
      busy = true;
      var ask = create
        ? navigator.credentials.create(creationOptions(JSON.parse(JSON.stringify(options))))
        : navigator.credentials.get(requestOptions(JSON.parse(JSON.stringify(options))));
      ask.then(function (credential) {
        field.value = encode(credential);
        form.submit();
      }, function (error) {
        busy = false;
        showError(form, failure(error));
      });
    });
  }
  document.querySelectorAll("form[data-passkey-create]").forEach(function (form) {
    handle(form, true);
  });
  document.querySelectorAll("form[data-passkey-get]").forEach(function (form) {
    handle(form, false);
  });
})();
