//! The open session's settings (a menu in its header): which model answers, and the
//! session's own instructions (its system prompt, used instead of the server's).

use relay_protocol::{MAX_SYSTEM_PROMPT_CHARS, ModelList, Session, UpdateSessionRequest};
use web_sys::{HtmlSelectElement, HtmlTextAreaElement};
use yew::prelude::*;

use crate::ctx::Ctx;

/// Props of [`ChatSettings`].
#[derive(Properties, PartialEq)]
pub struct SettingsProps {
    /// The session.
    pub session: Session,
    /// The models on offer (none until loaded).
    pub models: Option<ModelList>,
}

/// The menu (a disclosure, like Share and Export).
#[function_component(ChatSettings)]
pub fn chat_settings(props: &SettingsProps) -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    let session = &props.session;
    let prompt = use_state(|| session.system_prompt.clone().unwrap_or_default());
    let saved = use_state(|| false);
    // Another tab (or a reload) changed the session: show what it holds now. ("Saved"
    // stays: this tab's own save comes back this way too, before or after its answer.)
    {
        let prompt = prompt.clone();
        use_effect_with((session.id, session.system_prompt.clone()), move |(_, now)| {
            prompt.set(now.clone().unwrap_or_default());
        });
    }
    {
        let saved = saved.clone();
        use_effect_with(session.id, move |_| saved.set(false));
    }
    let session_id = session.id;
    let current_model = props.models.as_ref().map(|m| {
        session.model.clone().filter(|name| m.models.iter().any(|o| &o.name == name)).unwrap_or(m.default.clone())
    });
    // The picker shows the session's model, whatever was clicked last: an option's
    // `selected` attribute stops moving the choice once the user has picked one, so the
    // select's value is set after every render. A choice being saved is shown meanwhile
    // (a render before the answer must not put the old model back); once answered, the
    // session's model again, whether the change was taken or refused.
    let picker_ref = use_node_ref();
    let pending = use_mut_ref(|| None::<String>);
    let redraw = use_force_update();
    {
        let (picker_ref, pending, current_model) = (picker_ref.clone(), pending.clone(), current_model.clone());
        use_effect(move || {
            let shown = pending.borrow().clone().or(current_model);
            if let (Some(select), Some(model)) = (picker_ref.cast::<HtmlSelectElement>(), shown)
                && select.value() != model
            {
                select.set_value(&model);
            }
        });
    }
    let choose = {
        let ctx = ctx.clone();
        Callback::from(move |e: Event| {
            let Some(select) = e.target_dyn_into::<HtmlSelectElement>() else { return };
            *pending.borrow_mut() = Some(select.value());
            let change = UpdateSessionRequest { model: Some(select.value()), ..Default::default() };
            let (pending, redraw) = (pending.clone(), redraw.clone());
            ctx.update_session(
                session_id,
                change,
                Callback::from(move |_saved: bool| {
                    pending.borrow_mut().take();
                    redraw.force_update();
                }),
            );
        })
    };
    let edit = {
        let (prompt, saved) = (prompt.clone(), saved.clone());
        Callback::from(move |e: InputEvent| {
            if let Some(area) = e.target_dyn_into::<HtmlTextAreaElement>() {
                prompt.set(area.value());
                saved.set(false);
            }
        })
    };
    let save = {
        let (ctx, prompt, saved) = (ctx.clone(), prompt.clone(), saved.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let text = prompt.trim().to_owned();
            let change =
                UpdateSessionRequest { system_prompt: Some((!text.is_empty()).then_some(text)), ..Default::default() };
            let saved = saved.clone();
            ctx.update_session(session_id, change, Callback::from(move |ok| saved.set(ok)));
        })
    };
    let picker = props.models.as_ref().filter(|m| m.models.len() > 1).map(|models| {
        let options = models.models.iter().map(|m| {
            let selected = current_model.as_deref() == Some(m.name.as_str());
            html! { <option value={m.name.clone()} {selected}>{ &m.label }</option> }
        });
        html! {
            <div class="setting">
                <label for="model-picker">{ "Model" }</label>
                <select id="model-picker" ref={picker_ref} onchange={choose}>{ for options }</select>
            </div>
        }
    });
    let label = props
        .models
        .as_ref()
        .and_then(|m| m.models.iter().find(|o| Some(&o.name) == current_model.as_ref()).map(|o| o.label.clone()))
        .unwrap_or_else(|| "Settings".into());
    let too_long = prompt.chars().count() > MAX_SYSTEM_PROMPT_CHARS;
    html! {
        <details class="export settings" id="chat-settings">
            <summary title="Model and instructions for this chat">{ label }</summary>
            <div class="export-items settings-items">
                { for picker }
                <form class="setting" onsubmit={save}>
                    <label for="system-prompt">{ "Instructions for this chat" }</label>
                    <textarea id="system-prompt" rows="4" value={(*prompt).clone()} oninput={edit}
                        placeholder="How the model should answer here (empty: the server's default)" />
                    <div class="setting-actions">
                        if too_long {
                            <span class="setting-note" role="status">{ format!("At most {MAX_SYSTEM_PROMPT_CHARS} characters") }</span>
                        } else if *saved {
                            <span class="setting-note" id="system-prompt-saved" role="status">{ "Saved" }</span>
                        }
                        <button type="submit" id="save-system-prompt" disabled={too_long}>{ "Save" }</button>
                    </div>
                </form>
            </div>
        </details>
    }
}
