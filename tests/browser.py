"""The real browser the UI and dashboard tests drive: the Debian Chromium, headless, through
chromedriver, with its console and network logs kept so a test can say that a page raised no error
and loaded nothing from another host."""

from __future__ import annotations

import json
import shutil
from typing import Any

#: what a page's text must reach against its background (WCAG 2 AA, normal text)
MIN_CONTRAST = 4.5

# every element with its own text: its colour against the first opaque background up the tree
CONTRAST_JS = """
function lum(c){const m=c.match(/[\\d.]+/g).map(Number);const a=m.length>3?m[3]:1;
  return [m.slice(0,3).map(v=>{v/=255;return v<=0.03928?v/12.92:Math.pow((v+0.055)/1.055,2.4)}),a];}
function L(rgb){return 0.2126*rgb[0]+0.7152*rgb[1]+0.0722*rgb[2];}
function bg(el){while(el){const c=getComputedStyle(el).backgroundColor;const [rgb,a]=lum(c);
  if(a>0.9)return rgb;el=el.parentElement;}return [1,1,1];}
const bad=[];
for(const el of document.querySelectorAll('body *')){
  if(!el.offsetParent&&el.tagName!=='BODY')continue;
  const own=[...el.childNodes].some(n=>n.nodeType===3&&n.textContent.trim());
  if(!own)continue;
  const [fg]=lum(getComputedStyle(el).color);const b=bg(el);
  const l1=L(fg),l2=L(b);const r=(Math.max(l1,l2)+0.05)/(Math.min(l1,l2)+0.05);
  if(r<arguments[0])bad.push(el.tagName+'.'+el.className+': '+el.textContent.trim().slice(0,40)+' ('+r.toFixed(2)+')');
}
return bad;
"""

# form controls a screen reader could not name
UNLABELLED_JS = """
return [...document.querySelectorAll('input,select,textarea,button')].filter(el=>{
  if(el.type==='hidden'||!el.offsetParent)return false;
  if(el.getAttribute('aria-label')||el.getAttribute('aria-labelledby'))return false;
  if(el.tagName==='BUTTON'||el.type==='submit')return !el.textContent.trim()&&!el.value;
  if(el.id&&document.querySelector('label[for="'+el.id+'"]'))return false;
  return !el.closest('label');
}).map(el=>el.outerHTML.slice(0,80));
"""


def chromium(width: int = 1300, height: int = 1500) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)


def requested_urls(driver: Any) -> list[str]:
    """Every URL the browser asked for since the last call (the performance log drains)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
