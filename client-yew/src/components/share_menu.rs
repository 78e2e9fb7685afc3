//! The open session's Share menu: make a live link (anyone with it reads the chat and
//! watches replies being written, without an account), copy it, see how many watch, make
//! a new one, or stop sharing.

use relay_protocol::ShareStatus;
use uuid::Uuid;
use web_sys::HtmlSelectElement;
use yew::prelude::*;

use crate::ctx::Ctx;
use crate::effects::copy_with_feedback;
use crate::storage;

/// Props of [`ShareMenu`].
#[derive(Properties, PartialEq)]
pub struct ShareProps {
    /// The session.
    pub session_id: Uuid,
    /// Its working link, if any.
    pub share: Option<ShareStatus>,
}

/// How long a new link may work, as the menu offers it.
const LIFETIMES: [(&str, Option<u64>); 5] = [
    ("Until I stop sharing", None),
    ("1 hour", Some(3600)),
    ("1 day", Some(86_400)),
    ("7 days", Some(7 * 86_400)),
    ("30 days", Some(30 * 86_400)),
];

/// The menu (a disclosure: `<details>`, like Export).
#[function_component(ShareMenu)]
pub fn share_menu(props: &ShareProps) -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    let lifetime = use_state(|| 0usize);
    let busy = use_state(|| false);
    {
        let ctx = ctx.clone();
        use_effect_with(props.session_id, move |session_id| ctx.load_share(*session_id));
    }
    // A link that expired is no link (the server says nothing when it does).
    let now = chrono::DateTime::from_timestamp_millis(js_sys::Date::now() as i64).unwrap_or_default();
    let share = props.share.as_ref().filter(|s| s.expires_at.is_none_or(|at| at > now));
    let session_id = props.session_id;
    let done = {
        let busy = busy.clone();
        Callback::from(move |()| busy.set(false))
    };
    let create = {
        let (ctx, busy, lifetime, done) = (ctx.clone(), busy.clone(), lifetime.clone(), done.clone());
        Callback::from(move |_| {
            busy.set(true);
            ctx.create_share(session_id, LIFETIMES[*lifetime].1, done.clone());
        })
    };
    let stop = {
        let (ctx, busy) = (ctx.clone(), busy.clone());
        Callback::from(move |_| {
            busy.set(true);
            ctx.revoke_share(session_id, done.clone());
        })
    };
    let choose = {
        let lifetime = lifetime.clone();
        Callback::from(move |e: Event| {
            if let Some(select) = e.target_dyn_into::<HtmlSelectElement>() {
                lifetime.set(select.selected_index().max(0) as usize);
            }
        })
    };
    let options = LIFETIMES.iter().enumerate().map(|(i, (label, _))| {
        html! { <option value={i.to_string()} selected={i == *lifetime}>{ *label }</option> }
    });
    let new_link = html! {
        <div class="share-new">
            <label for="share-expiry">{ "Link works" }</label>
            <select id="share-expiry" onchange={choose}>{ for options }</select>
            <button type="button" id="share-create" onclick={create} disabled={*busy}>
                { if share.is_some() { "Make a new link" } else { "Create link" } }
            </button>
        </div>
    };
    let body = match share {
        None => html! {
            <>
                <p class="share-about">{ "Anyone with the link can read this chat and watch new replies as they are written, without an account. They cannot write in it." }</p>
                { new_link }
            </>
        },
        Some(share) => {
            let url = storage::share_url(share.id);
            let link = match url {
                Some(url) => {
                    let copy = {
                        let url = url.clone();
                        Callback::from(move |e: MouseEvent| {
                            if let Some(button) = e.target_dyn_into::<web_sys::Element>() {
                                copy_with_feedback(&url, button);
                            }
                        })
                    };
                    html! {
                        <div class="share-link">
                            <label for="share-url">{ "Link" }</label>
                            <input id="share-url" type="text" readonly=true value={url} />
                            <button type="button" id="share-copy" onclick={copy}>{ "Copy" }</button>
                        </div>
                    }
                }
                None => html! {
                    <p class="share-about">{ "This chat is shared with a link made elsewhere. Make a new link here to copy it (the old one stops working)." }</p>
                },
            };
            let expires = share.expires_at.map(|at| format!(" · works until {}", at.format("%Y-%m-%d %H:%M UTC")));
            html! {
                <>
                    { link }
                    <p id="share-status">{ watching(share.viewers) }{ expires.unwrap_or_default() }</p>
                    { new_link }
                    <button type="button" id="share-stop" class="danger" onclick={stop} disabled={*busy}>{ "Stop sharing" }</button>
                </>
            }
        }
    };
    let summary = match share {
        Some(share) => {
            html! { <>{ "Shared" }<span id="share-viewers" class="share-count">{ format!(" · {} watching", share.viewers) }</span></> }
        }
        None => html! { "Share" },
    };
    html! {
        <details class="export share" id="share">
            <summary>{ summary }</summary>
            <div class="export-items share-items">{ body }</div>
        </details>
    }
}

fn watching(viewers: u32) -> String {
    match viewers {
        0 => "Nobody is watching now".to_owned(),
        1 => "1 person is watching now".to_owned(),
        n => format!("{n} people are watching now"),
    }
}
