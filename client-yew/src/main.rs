//! The wasm entry point: mounts the app.

fn main() {
    relay_client_yew::start();
}
