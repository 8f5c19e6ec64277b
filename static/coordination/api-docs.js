// Starts Swagger UI on /api/v1/docs from the settings the page carries as JSON (no inline
// script: the site's CSP allows scripts from this origin only).
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var config = JSON.parse(document.getElementById("swagger-settings").textContent);
    config.dom_id = "#swagger-ui";
    config.presets = [SwaggerUIBundle.presets.apis];
    window.ui = SwaggerUIBundle(config);
  });
})();
