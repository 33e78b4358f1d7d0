// The views' only script (pages allow no inline script: see their Content-Security-Policy).
document.addEventListener("DOMContentLoaded", () => {
  // A gallery tile without a GIF preview shows the MP4's first frame and plays it on hover.
  for (const video of document.querySelectorAll(".tile video")) {
    video.addEventListener("mouseenter", () => video.play().catch(() => {}));
    video.addEventListener("mouseleave", () => video.pause());
  }
  // The gallery's filters apply as soon as one is chosen (a Filter button serves without scripts).
  for (const select of document.querySelectorAll("form.filters select")) {
    select.addEventListener("change", () => select.form.submit());
  }
});
