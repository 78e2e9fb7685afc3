//! The saved prompts the composer offers when its text starts with `/`: the ones whose
//! title holds what follows the `/`, one highlighted (the arrows move it, Enter or a click
//! inserts it, a button deletes it), and a form below that saves a new one.

use relay_protocol::{MAX_PROMPT_CONTENT_CHARS, MAX_PROMPT_TITLE_CHARS, Prompt};
use uuid::Uuid;
use web_sys::{HtmlInputElement, HtmlTextAreaElement};
use yew::prelude::*;

use super::icons::{self, Icon};

/// The prompts matching what follows the `/` (case aside), in the list's order.
pub fn matching<'a>(prompts: &'a [Prompt], query: &str) -> Vec<&'a Prompt> {
    let query = query.trim().to_lowercase();
    prompts.iter().filter(|p| p.title.to_lowercase().contains(&query)).collect()
}

/// The id of the option element of a prompt (for `aria-activedescendant`).
pub fn option_id(prompt: Uuid) -> String {
    format!("prompt-{prompt}")
}

/// Props of [`PromptPicker`].
#[derive(Properties, PartialEq)]
pub struct PickerProps {
    /// The prompts shown (already filtered); `None` while loading.
    pub prompts: Option<Vec<Prompt>>,
    /// The highlighted one.
    pub highlight: usize,
    /// Inserts a prompt's text.
    pub on_pick: Callback<Prompt>,
    /// Deletes a prompt.
    pub on_delete: Callback<Uuid>,
    /// Saves a new prompt (title, text).
    pub on_save: Callback<(String, String)>,
}

/// The list and the form.
#[function_component(PromptPicker)]
pub fn prompt_picker(props: &PickerProps) -> Html {
    let title = use_state(String::new);
    let content = use_state(String::new);
    let items = match &props.prompts {
        None => html! { <li class="prompt-empty">{ "Loading your prompts…" }</li> },
        Some(prompts) if prompts.is_empty() => {
            html! { <li class="prompt-empty">{ "No saved prompt matches. Save one below." }</li> }
        }
        Some(prompts) => prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let chosen = i == props.highlight;
                let pick = {
                    let (on_pick, prompt) = (props.on_pick.clone(), p.clone());
                    // On mouse down, so the composer keeps its focus.
                    Callback::from(move |e: MouseEvent| {
                        e.prevent_default();
                        on_pick.emit(prompt.clone());
                    })
                };
                html! {
                    <li id={option_id(p.id)} role="option" aria-selected={chosen.to_string()}
                        class={classes!("prompt-option", chosen.then_some("chosen"))} onmousedown={pick}>
                        <span class="prompt-title">{ &p.title }</span>
                        <span class="prompt-text">{ p.content.chars().take(80).collect::<String>() }</span>
                    </li>
                }
            })
            .collect::<Html>(),
    };
    // Deleting acts on the highlighted prompt (a listbox holds options only, no buttons).
    let chosen = props.prompts.as_ref().and_then(|p| p.get(props.highlight)).cloned();
    let delete = chosen.map(|p| {
        let (on_delete, id) = (props.on_delete.clone(), p.id);
        let onclick = Callback::from(move |_: MouseEvent| on_delete.emit(id));
        html! {
            <button type="button" class="link prompt-delete" id="prompt-delete" {onclick}>
                { icons::show(Icon::Trash) }{ format!("Delete “{}”", p.title) }
            </button>
        }
    });
    let (title_field, content_field) = (use_node_ref(), use_node_ref());
    let save = {
        let (title_field, content_field, on_save) = (title_field.clone(), content_field.clone(), props.on_save.clone());
        // A button, not a form: the picker sits inside the composer's form, whose submit
        // would send the `/` as a message. The fields are read as they are now (a key
        // pressed right after typing may come before the state of the last keystroke).
        Callback::from(move |()| {
            let title = title_field.cast::<HtmlInputElement>().map(|i| i.value()).unwrap_or_default();
            let content = content_field.cast::<HtmlTextAreaElement>().map(|a| a.value()).unwrap_or_default();
            if title.trim().is_empty() || content.trim().is_empty() {
                return;
            }
            on_save.emit((title, content));
        })
    };
    // The form empties once the list comes back with the new prompt (not before: a save the
    // server refuses keeps what was typed).
    {
        let (title, content) = (title.clone(), content.clone());
        let count = props.prompts.as_ref().map(Vec::len);
        use_effect_with(count, move |_| {
            title.set(String::new());
            content.set(String::new());
        });
    }
    let save_click = {
        let save = save.clone();
        Callback::from(move |_: MouseEvent| save.emit(()))
    };
    // Enter in the name saves (and never submits the composer's form around the picker).
    let title_key = {
        let save = save.clone();
        Callback::from(move |e: KeyboardEvent| {
            if e.key() == "Enter" {
                e.prevent_default();
                save.emit(());
            }
        })
    };
    let set_title = {
        let title = title.clone();
        Callback::from(move |e: InputEvent| {
            if let Some(input) = e.target_dyn_into::<HtmlInputElement>() {
                title.set(input.value());
            }
        })
    };
    let set_content = {
        let content = content.clone();
        Callback::from(move |e: InputEvent| {
            if let Some(area) = e.target_dyn_into::<HtmlTextAreaElement>() {
                content.set(area.value());
            }
        })
    };
    html! {
        <div class="prompt-picker" id="prompt-picker">
            <ul id="prompt-options" role="listbox" aria-label="Saved prompts">{ items }</ul>
            { for delete }
            <div class="prompt-new" role="group" aria-label="Save a new prompt">
                <input id="prompt-new-title" ref={title_field} type="text" placeholder="New prompt's name" aria-label="New prompt's name"
                    maxlength={MAX_PROMPT_TITLE_CHARS.to_string()} value={(*title).clone()} oninput={set_title}
                    onkeydown={title_key} />
                <textarea id="prompt-new-content" ref={content_field} rows="2" placeholder="Its text" aria-label="New prompt's text"
                    maxlength={MAX_PROMPT_CONTENT_CHARS.to_string()} value={(*content).clone()} oninput={set_content} />
                <button type="button" id="prompt-save" onclick={save_click}>{ "Save prompt" }</button>
            </div>
        </div>
    }
}
