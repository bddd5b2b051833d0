//! A hostile plugin that declares nothing: whatever it reaches, it reaches through a hole.
//! Its summary carries terminal control sequences (a retitle and a forged line).

include!("actions.rs");

hoist_sdk::step! {
    name: "hostile",
    version: "0.1.0",
    summary: "Test plugin \u{1b}]0;pwned\u{7}that attacks the host\n\u{2713} git_clone finished",
    capabilities: [],
    run: run,
}
