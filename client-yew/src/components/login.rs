//! The login and registration screen.

use web_sys::HtmlInputElement;
use yew::prelude::*;

use crate::api;
use crate::ctx::Ctx;

/// Props of [`Login`].
#[derive(Properties, PartialEq)]
pub struct LoginProps {
    /// Why the user is here again (e.g. the login expired).
    pub notice: Option<String>,
}

/// Logs in or registers, then keeps the token.
#[function_component(Login)]
pub fn login(props: &LoginProps) -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    let username = use_node_ref();
    let password = use_node_ref();
    let error = use_state(|| None::<String>);
    let busy = use_state(|| false);

    let submit = |register: bool| {
        let (ctx, username, password, error, busy) =
            (ctx.clone(), username.clone(), password.clone(), error.clone(), busy.clone());
        Callback::from(move |event: SubmitEvent| {
            event.prevent_default();
            let value = |r: &NodeRef| r.cast::<HtmlInputElement>().map(|i| i.value()).unwrap_or_default();
            let (name, secret) = (value(&username), value(&password));
            let (ctx, error, busy) = (ctx.clone(), error.clone(), busy.clone());
            busy.set(true);
            wasm_bindgen_futures::spawn_local(async move {
                let result =
                    if register { api::register(&name, &secret).await } else { api::login(&name, &secret).await };
                busy.set(false);
                match result {
                    Ok(auth) => ctx.logged_in(auth),
                    Err(e) => error.set(Some(e.message)),
                }
            });
        })
    };
    let register = use_state(|| false);
    let toggle = {
        let (register, error) = (register.clone(), error.clone());
        Callback::from(move |_| {
            register.set(!*register);
            error.set(None);
        })
    };
    let (title, action, other) = if *register {
        ("Create an account", "Register", "I have an account")
    } else {
        ("Log in", "Log in", "Create an account")
    };
    html! {
        <main class="login">
            <section class="intro" aria-labelledby="product">
                <h1 id="product">{ "relay-chat" }</h1>
                <p class="tagline">{ "Chat with a language model, live in every tab." }</p>
                <ul class="points">
                    <li>{ "Replies stream in as they are written; stop one at any time." }</li>
                    <li>{ "Your chats are kept: open one in another tab or on another device and it follows along." }</li>
                    <li>{ "Regenerate an answer or edit your question; code comes highlighted and ready to copy." }</li>
                </ul>
            </section>
            <form class="card" onsubmit={submit(*register)}>
                <h2>{ title }</h2>
                if let Some(notice) = &props.notice {
                    <p class="notice" id="login-notice">{ notice }</p>
                }
                <label>{ "Username" }
                    <input id="username" ref={username} autocomplete="username" required=true minlength="3" maxlength="32" />
                </label>
                <label>{ "Password" }
                    <input id="password" ref={password} type="password" required=true minlength="8"
                        autocomplete={ if *register { "new-password" } else { "current-password" } } />
                </label>
                if let Some(message) = &*error {
                    <p class="error" id="login-error">{ message }</p>
                }
                <button id="login-submit" type="submit" class="primary" disabled={*busy}>{ action }</button>
                <button id="login-toggle" type="button" class="link" onclick={toggle}>{ other }</button>
            </form>
        </main>
    }
}
