//! The login and registration screen.

use web_sys::HtmlInputElement;
use yew::prelude::*;

use super::app::Ctx;
use crate::state::Action;
use crate::{api, storage};

/// Logs in or registers, then keeps the token.
#[function_component(Login)]
pub fn login() -> Html {
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
                    Ok(auth) => {
                        storage::save_auth(&auth.user, &auth.token);
                        ctx.model.dispatch(Action::LoggedIn { user: auth.user, token: auth.token });
                    }
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
            <form class="card" onsubmit={submit(*register)}>
                <h1>{ "relay-chat" }</h1>
                <h2>{ title }</h2>
                if let Some(notice) = &ctx.model.notice {
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
